//! FHIR search: the parameter registry and the query parser (the search
//! index and the compiler to DataFusion plans build on these).

pub mod extract;
pub mod query;
pub mod range;
pub mod registry;

pub use query::{Clause, ClauseKind, Modifier, Prefix, SearchQuery, SearchValue, parse_search};
pub use registry::{ParamType, SearchParam, SearchRegistry};

/// Errors of parsing a search expression.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The expression's syntax is wrong.
    #[error("invalid search '{expression}': {message}")]
    Syntax {
        /// The expression.
        expression: String,
        /// What is wrong.
        message: String,
    },
    /// The resource type is unknown.
    #[error("'{resource_type}' is not a FHIR R4 resource type")]
    UnknownType {
        /// The name given.
        resource_type: String,
    },
    /// The parameter does not exist for the type.
    #[error("unknown search parameter '{param}' for {resource_type}; supported: {}", supported.join(", "))]
    UnknownParameter {
        /// The parameter.
        param: String,
        /// The resource type.
        resource_type: String,
        /// What the type supports.
        supported: Vec<String>,
    },
    /// The parameter exists but cannot be searched here.
    #[error("search parameter '{param}' of {resource_type} is not supported: {reason}")]
    Unsupported {
        /// The parameter.
        param: String,
        /// The resource type.
        resource_type: String,
        /// Why.
        reason: String,
    },
    /// A result parameter (`_sort`, `_count`, …) in a cohort or type filter.
    #[error("'{param}' is a result parameter and cannot select resources (in '{expression}')")]
    ResultParameter {
        /// The parameter.
        param: String,
        /// The expression.
        expression: String,
    },
    /// A modifier the parameter's type does not take.
    #[error("modifier ':{modifier}' is not valid for '{param}' (in '{expression}')")]
    BadModifier {
        /// The parameter.
        param: String,
        /// The modifier.
        modifier: String,
        /// The expression.
        expression: String,
    },
    /// A value that does not fit the parameter's type.
    #[error("invalid value '{value}' for '{param}': {reason}")]
    BadValue {
        /// The parameter.
        param: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The bundled definitions are unusable.
    #[error("search definitions unavailable: {0}")]
    Definitions(#[source] &'static crate::fhir::DefinitionError),
}

impl crate::error::HasKind for SearchError {
    fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::Definitions(_) => crate::error::ErrorKind::Internal,
            _ => crate::error::ErrorKind::Invalid,
        }
    }
}

impl SearchError {
    pub(crate) fn syntax(expression: &str, message: impl Into<String>) -> Self {
        SearchError::Syntax {
            expression: expression.to_string(),
            message: message.into(),
        }
    }
}
