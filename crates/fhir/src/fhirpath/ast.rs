//! The FHIRPath syntax tree: parsed once per expression, evaluated per resource.

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `{}`
    Empty,
    /// `true` / `false`
    Boolean(bool),
    /// `'text'`
    String(String),
    /// `42`
    Integer(i64),
    /// `4.50` (text kept, so precision is kept)
    Decimal(String),
    /// `@2020-01-01`
    Date(String),
    /// `@2020-01-01T10:00:00Z`
    DateTime(String),
    /// `@T10:00`
    Time(String),
    /// `4 'mg'`, `3 days`
    Quantity {
        /// The number, as written.
        value: String,
        /// UCUM unit or calendar duration word.
        unit: String,
    },
}

/// Binary operators, in FHIRPath's precedence groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Gt,
    Le,
    Ge,
    Eq,
    Equivalent,
    NotEq,
    NotEquivalent,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

/// A type name in `is`, `as`, `ofType`: optionally qualified (`FHIR.Patient`,
/// `System.String`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSpecifier {
    /// `FHIR`, `System` or none.
    pub namespace: Option<String>,
    /// The type's name.
    pub name: String,
}

/// An expression node. `pos` fields are byte offsets for error messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Literal(Literal),
    /// A name evaluated on the focus: member navigation (or a type name at the root).
    Identifier(String),
    /// `%name` (constants, `%resource`, `%context`, `%rowIndex`, …).
    External(String),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `$total`
    Total,
    /// `expr.name`
    Member(Box<Expr>, String),
    /// `name(args)` on the focus (`target` `None`) or `expr.name(args)`.
    Function {
        /// What it is invoked on.
        target: Option<Box<Expr>>,
        /// Function name.
        name: String,
        /// Arguments, unevaluated (functions decide when and on what to evaluate them).
        args: Vec<Expr>,
        /// Where the name starts in the source.
        pos: usize,
    },
    /// `expr[index]`
    Indexer(Box<Expr>, Box<Expr>),
    /// Unary minus (`-x`); unary plus is dropped at parse time.
    Negate(Box<Expr>),
    /// `a op b`
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `expr is Type`
    Is(Box<Expr>, TypeSpecifier),
    /// `expr as Type`
    As(Box<Expr>, TypeSpecifier),
}
