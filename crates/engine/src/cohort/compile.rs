//! Compiling a parsed search to a DataFusion logical plan over the index.
//!
//! Every clause becomes a plan yielding `(resource_id, patient)` of the
//! resources of the searched type that meet it; the clauses of one
//! expression are semi-joined on the resource id (all must hold for the
//! same resource). Chains and `_has` join through the reference index (or,
//! for a `_has` whose reference the load proved to be the compartment, read
//! the inner clause's `patient` column). Only ordinary operators (scan,
//! filter, projection, union, semi/anti join, except, distinct) are used.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::{Column, TableReference};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, LogicalPlanBuilder, col, lit};

use super::CohortError;
use super::predicate;
use crate::index::IndexKind;
use crate::index::columns::{PARAM, PATIENT, RESOURCE_ID};
use crate::index::writer::CompartmentReferences;
use crate::search::extract::ID_PARAM;
use crate::search::registry::Derivation;
use crate::search::{Clause, ClauseKind, Modifier, ParamType, SearchParam, SearchQuery, SearchRegistry, SearchValue};

/// Index table providers by (kind, resource type).
pub type IndexProviders = HashMap<(IndexKind, String), Arc<dyn TableProvider>>;

/// Resource table providers by resource type.
pub type ResourceProviders = HashMap<String, Arc<dyn TableProvider>>;

/// The parameter whose value falls back to the load time.
const LAST_UPDATED_PARAM: &str = "_lastUpdated";

/// Builds plans over one set of index tables (and the resource tables,
/// which answer `_id`, and `_lastUpdated` of resources without
/// `meta.lastUpdated`, without index rows).
pub struct Compiler<'a> {
    providers: &'a IndexProviders,
    resources: &'a ResourceProviders,
    compartment_references: &'a CompartmentReferences,
    registry: &'static SearchRegistry,
    next_alias: std::cell::Cell<usize>,
}

/// The schema the compiler's own scans are named in: no catalog has it, so
/// a scan named in it comes from a cohort plan (which checked the types it
/// reads when it was built), never from a table a query named.
pub const INTERNAL_SCHEMA: &str = "cohort_internal";

/// A scan name in [`INTERNAL_SCHEMA`].
pub(crate) fn internal_table(name: impl Into<String>) -> TableReference {
    TableReference::partial(INTERNAL_SCHEMA, name.into())
}

impl<'a> Compiler<'a> {
    /// A compiler over `providers`; `compartment_references` is what the
    /// snapshot's reference index tables say (see
    /// [`crate::warehouse::TableEntry::compartment_references`]).
    pub fn new(
        providers: &'a IndexProviders,
        resources: &'a ResourceProviders,
        compartment_references: &'a CompartmentReferences,
        registry: &'static SearchRegistry,
    ) -> Self {
        Self {
            providers,
            resources,
            compartment_references,
            registry,
            next_alias: std::cell::Cell::new(0),
        }
    }

    fn alias(&self, stem: &str) -> String {
        let n = self.next_alias.get();
        self.next_alias.set(n + 1);
        format!("{stem}_{n}")
    }

    /// A scan of the `kind` index of `resource_type` (empty when none was written).
    pub(crate) fn scan(&self, kind: IndexKind, resource_type: &str) -> Result<LogicalPlanBuilder, CohortError> {
        let provider = self
            .providers
            .get(&(kind, resource_type.to_string()))
            .cloned()
            .unwrap_or_else(|| Arc::new(EmptyTable::new(kind.schema())));
        let name = self.alias(&format!("{}_{}", kind.name(), resource_type.to_lowercase()));
        Ok(LogicalPlanBuilder::scan(
            internal_table(name),
            provider_as_source(provider),
            None,
        )?)
    }

    /// `(resource_id, patient)` of the rows of `param` in the `kind` index of
    /// `resource_type` that pass `filter`.
    fn matching(
        &self,
        kind: IndexKind,
        resource_type: &str,
        param: &str,
        filter: Expr,
    ) -> Result<LogicalPlanBuilder, CohortError> {
        let rows = match (kind, param) {
            (IndexKind::Token, ID_PARAM) => self.id_rows(resource_type)?,
            (IndexKind::Date, LAST_UPDATED_PARAM) => self.last_updated_rows(resource_type)?,
            _ => self.scan(kind, resource_type)?,
        };
        Ok(rows
            .filter(self.param_rows(resource_type, param).and(filter))?
            .project(vec![col(RESOURCE_ID), col(PATIENT)])?)
    }

    /// The predicate selecting the index rows of `param` of `resource_type`:
    /// its own rows, or for a derived parameter (see [`Derivation`]) the
    /// rows it derives from. Warehouses written before derived parameters
    /// lost their rows still hold both; reading the base rows is right for
    /// them too.
    pub fn param_rows(&self, resource_type: &str, param: &str) -> Expr {
        match self.registry.get(resource_type, param).and_then(|p| p.derived.as_ref()) {
            Some(Derivation::TargetsOf { base, target }) => col(PARAM)
                .eq(lit(base.as_str()))
                .and(col("target_type").eq(lit(target.as_str()))),
            Some(Derivation::UnionOf(parts)) => {
                col(PARAM).in_list(parts.iter().map(|p| lit(p.as_str())).collect(), false)
            }
            None => col(PARAM).eq(lit(param)),
        }
    }

    /// Every resource of `resource_type` from its resource table, one row
    /// per compartment patient (`patient` null for a resource in no
    /// compartment): `(resource_id, patient, last_updated, loaded_at)`.
    pub fn resource_rows(&self, resource_type: &str) -> Result<LogicalPlanBuilder, CohortError> {
        use crate::warehouse::schema::resource_columns::{ID, LAST_UPDATED, LOADED_AT, PATIENTS};
        use crate::warehouse::schema::resource_schema;
        use datafusion::common::{ScalarValue, UnnestOptions};
        use datafusion::functions_nested::expr_fn::cardinality;
        use datafusion::logical_expr::when;
        let schema = resource_schema();
        let provider = self
            .resources
            .get(resource_type)
            .cloned()
            .unwrap_or_else(|| Arc::new(EmptyTable::new(schema.clone())));
        let patients_type = schema
            .field_with_name(PATIENTS)
            .map_err(datafusion::error::DataFusionError::from)?
            .data_type();
        // Unnesting an empty list yields no row; a resource outside every
        // compartment still needs one (chains and `_has` match it by id).
        let no_patient = lit(ScalarValue::try_from(patients_type)?);
        let patients = when(cardinality(col(PATIENTS)).eq(lit(0u64)), no_patient).otherwise(col(PATIENTS))?;
        let name = self.alias(&format!("resources_{}", resource_type.to_lowercase()));
        Ok(
            LogicalPlanBuilder::scan(internal_table(name), provider_as_source(provider), None)?
                .project(vec![
                    col(ID).alias(RESOURCE_ID),
                    patients.alias(PATIENT),
                    col(LAST_UPDATED),
                    col(LOADED_AT),
                ])?
                .unnest_column_with_options(PATIENT, UnnestOptions::new().with_preserve_nulls(true))?,
        )
    }

    /// `_id` as token index rows (`code` = the id), read from the resource
    /// table: the index keeps no row per resource for it.
    fn id_rows(&self, resource_type: &str) -> Result<LogicalPlanBuilder, CohortError> {
        use datafusion::common::ScalarValue;
        let null = || lit(ScalarValue::Utf8(None));
        Ok(self.resource_rows(resource_type)?.project(vec![
            lit(ID_PARAM).alias(PARAM),
            col(RESOURCE_ID).alias("code"),
            null().alias("system"),
            null().alias("text"),
            null().alias("type_system"),
            null().alias("type_code"),
            col(RESOURCE_ID),
            col(PATIENT),
        ])?)
    }

    /// `_lastUpdated` as date index rows: the index holds `meta.lastUpdated`
    /// (with its precision range); a resource without it last changed when
    /// its load stored it (`loaded_at`, as `$export`'s `_since` counts it),
    /// read from the resource table.
    fn last_updated_rows(&self, resource_type: &str) -> Result<LogicalPlanBuilder, CohortError> {
        use crate::warehouse::schema::resource_columns::{LAST_UPDATED, LOADED_AT};
        let indexed = self
            .scan(IndexKind::Date, resource_type)?
            .project(vec![
                col(PARAM),
                col("low"),
                col("high"),
                col(RESOURCE_ID),
                col(PATIENT),
            ])?
            .build()?;
        let loaded = self
            .resource_rows(resource_type)?
            .filter(col(LAST_UPDATED).is_null())?
            .project(vec![
                lit(LAST_UPDATED_PARAM).alias(PARAM),
                col(LOADED_AT).alias("low"),
                col(LOADED_AT).alias("high"),
                col(RESOURCE_ID),
                col(PATIENT),
            ])?
            .build()?;
        Ok(LogicalPlanBuilder::from(indexed).union(loaded)?)
    }

    /// The rows of `previous` whose resource is also in `next`: a semi join
    /// on `resource_id` alone. Every clause plan carries all compartment
    /// patients of each resource it matches, so comparing resources is the
    /// same as intersecting `(resource_id, patient)`, and the probe side
    /// reads one string column instead of two. `previous` is the build side:
    /// the cohort session collects it whole and pushes it into the probe
    /// side's Parquet scan as a dynamic filter, so rows of other resources
    /// are dropped while decoding.
    fn same_resource(&self, previous: LogicalPlan, next: LogicalPlan) -> Result<LogicalPlan, CohortError> {
        let alias = self.alias("same_resource");
        let next = LogicalPlanBuilder::from(next)
            .project(vec![col(RESOURCE_ID)])?
            .alias(alias.as_str())?
            .build()?;
        Ok(LogicalPlanBuilder::from(previous)
            .join(
                next,
                JoinType::LeftSemi,
                (
                    vec![Column::from_name(RESOURCE_ID)],
                    vec![Column::new(Some(alias.as_str()), RESOURCE_ID)],
                ),
                None,
            )?
            .build()?)
    }

    /// Every resource of `resource_type` with its patients.
    fn all(&self, resource_type: &str) -> Result<LogicalPlanBuilder, CohortError> {
        Ok(self
            .resource_rows(resource_type)?
            .project(vec![col(RESOURCE_ID), col(PATIENT)])?)
    }

    /// `(resource_id, patient)` of the resources of the query's type that
    /// meet every clause.
    pub fn query(&self, query: &SearchQuery) -> Result<LogicalPlan, CohortError> {
        // The first plan is the hash table every later clause probes, so
        // clauses keep the order the user wrote (put the selective one
        // first): a guess by parameter type would build on `status=final`
        // or `gender=female` ahead of a selective date.
        let mut plans: Vec<LogicalPlan> = Vec::new();
        // Repeated date/number parameters that yield at most one value per
        // resource (`date=ge2019&date=lt2020` on `Encounter.period`) are one
        // scan with both ranges: no resource can meet them with two values.
        let mut combined: Vec<(&SearchParam, Vec<Expr>)> = Vec::new();
        for clause in &query.clauses {
            if let ClauseKind::Param {
                param,
                modifier: None,
                values,
            } = &clause.kind
                && matches!(param.param_type, ParamType::Date | ParamType::Number)
                && single_valued(param, query.resource_type)
                && let Some(kind) = IndexKind::of(param.param_type)
            {
                let filters = values
                    .iter()
                    .map(|v| value_filter(kind, &param.code, None, v))
                    .collect::<Result<Vec<_>, _>>()?;
                let filter = predicate::disjunction(filters);
                match combined.iter_mut().find(|(p, _)| p.code == param.code) {
                    Some((_, list)) => list.push(filter),
                    None => combined.push((param, vec![filter])),
                }
                continue;
            }
            plans.push(self.clause(query.resource_type, clause)?.build()?);
        }
        for (param, filters) in combined {
            let kind = IndexKind::of(param.param_type).ok_or_else(|| CohortError::Unsupported {
                param: param.code.clone(),
                reason: "not indexed".into(),
            })?;
            plans.push(
                self.matching(kind, query.resource_type, &param.code, predicate::conjunction(filters))?
                    .build()?,
            );
        }
        let mut plan: Option<LogicalPlan> = None;
        for next in plans {
            plan = Some(match plan {
                None => next,
                Some(previous) => self.same_resource(previous, next)?,
            });
        }
        match plan {
            Some(plan) => Ok(plan),
            None => Ok(self.all(query.resource_type)?.build()?),
        }
    }

    fn clause(&self, resource_type: &str, clause: &Clause) -> Result<LogicalPlanBuilder, CohortError> {
        match &clause.kind {
            ClauseKind::Param {
                param,
                modifier,
                values,
            } => self.param(resource_type, param, modifier.as_ref(), values),
            ClauseKind::Chain {
                reference,
                target_type,
                inner,
            } => {
                // Semi joins build their hash table on the left input: the
                // (usually smaller) set of matching ids goes left, the
                // type-wide reference rows are probed (RightSemi).
                let targets_alias = self.alias("chain_target");
                let targets = self
                    .clause(target_type, inner)?
                    .project(vec![col(RESOURCE_ID)])?
                    .alias(targets_alias.as_str())?;
                let referring = self.references(resource_type, reference, target_type)?.build()?;
                Ok(targets
                    .join(
                        referring,
                        JoinType::RightSemi,
                        (
                            vec![Column::new(Some(targets_alias.as_str()), RESOURCE_ID)],
                            vec![Column::from_name("target_id")],
                        ),
                        None,
                    )?
                    .project(vec![col(RESOURCE_ID), col(PATIENT)])?)
            }
            ClauseKind::Has {
                source_type,
                reference,
                inner,
            } => {
                let targets = if resource_type == "Patient"
                    && self
                        .compartment_references
                        .get(*source_type)
                        .is_some_and(|params| params.contains(&reference.code))
                {
                    // The load found this parameter's Patient targets to be
                    // exactly each source resource's compartment, so the
                    // inner clause's own `patient` column holds them: no
                    // pass over the type's reference rows (which, for a
                    // broad inner clause, decodes every reference id).
                    self.clause(source_type, inner)?
                        .filter(col(PATIENT).is_not_null())?
                        .project(vec![col(PATIENT).alias("target_id")])?
                        .distinct()?
                } else {
                    self.has_targets(resource_type, source_type, reference, inner)?
                };
                let targets_alias = self.alias("has_target");
                Ok(targets
                    .alias(targets_alias.as_str())?
                    .join(
                        self.all(resource_type)?.build()?,
                        JoinType::RightSemi,
                        (
                            vec![Column::new(Some(targets_alias.as_str()), "target_id")],
                            vec![Column::from_name(RESOURCE_ID)],
                        ),
                        None,
                    )?
                    .project(vec![col(RESOURCE_ID), col(PATIENT)])?)
            }
        }
    }

    /// `target_id` of the `resource_type` resources that `reference` of the
    /// `source_type` resources meeting `inner` points to, through the
    /// reference index.
    fn has_targets(
        &self,
        resource_type: &str,
        source_type: &str,
        reference: &SearchParam,
        inner: &Clause,
    ) -> Result<LogicalPlanBuilder, CohortError> {
        let sources_alias = self.alias("has_source");
        Ok(self
            .clause(source_type, inner)?
            .project(vec![col(RESOURCE_ID)])?
            .alias(sources_alias.as_str())?
            .join(
                self.references(source_type, reference, resource_type)?.build()?,
                JoinType::RightSemi,
                (
                    vec![Column::new(Some(sources_alias.as_str()), RESOURCE_ID)],
                    vec![Column::from_name(RESOURCE_ID)],
                ),
                None,
            )?
            .project(vec![col("target_id")])?
            .distinct()?)
    }

    /// Reference rows of `param` of `resource_type` that point to `target_type`:
    /// `(resource_id, patient, target_id)`.
    fn references(
        &self,
        resource_type: &str,
        param: &SearchParam,
        target_type: &str,
    ) -> Result<LogicalPlanBuilder, CohortError> {
        Ok(self
            .scan(IndexKind::Reference, resource_type)?
            .filter(
                self.param_rows(resource_type, &param.code)
                    .and(col("target_type").eq(lit(target_type)).or(col("target_type").is_null())),
            )?
            .project(vec![col(RESOURCE_ID), col(PATIENT), col("target_id")])?)
    }

    fn param(
        &self,
        resource_type: &str,
        param: &SearchParam,
        modifier: Option<&Modifier>,
        values: &[SearchValue],
    ) -> Result<LogicalPlanBuilder, CohortError> {
        if param.param_type == ParamType::Composite {
            if modifier == Some(&Modifier::Missing) {
                return Err(CohortError::Unsupported {
                    param: param.code.clone(),
                    reason: ":missing is not supported on composite parameters; use it on their parts".into(),
                });
            }
            return self.composite(resource_type, param, values);
        }
        let kind = IndexKind::of(param.param_type).ok_or_else(|| CohortError::Unsupported {
            param: param.code.clone(),
            reason: format!("{:?} parameters are not indexed", param.param_type),
        })?;
        let code = param.code.as_str();
        if modifier == Some(&Modifier::OfType) && !may_yield_identifiers(param, resource_type) {
            return Err(CohortError::Unsupported {
                param: param.code.clone(),
                reason: format!(
                    ":of-type searches identifiers by their type, and {resource_type}.{code} is not an Identifier parameter (try {resource_type}?identifier:of-type=…)"
                ),
            });
        }
        if modifier == Some(&Modifier::Missing) {
            // Values are `true`/`false` (the parser allows no other); a
            // comma means either, so `true,false` is every resource.
            let missing = values.contains(&SearchValue::Missing(true));
            let present = values.contains(&SearchValue::Missing(false));
            if missing && present {
                return self.all(resource_type);
            }
            let present = self.matching(kind, resource_type, code, lit(true))?.build()?;
            return Ok(if missing {
                LogicalPlanBuilder::from(LogicalPlanBuilder::except(
                    self.all(resource_type)?.build()?,
                    present,
                    false,
                )?)
            } else {
                LogicalPlanBuilder::from(present).distinct()?
            });
        }
        let positive_modifier = if modifier == Some(&Modifier::Not) {
            None
        } else {
            modifier
        };
        let filters = values
            .iter()
            .map(|value| value_filter(kind, code, positive_modifier, value))
            .collect::<Result<Vec<_>, _>>()?;
        let matches = self.matching(kind, resource_type, code, predicate::disjunction(filters))?;
        if modifier == Some(&Modifier::Not) {
            // R4: `:not` also returns resources without any value.
            return Ok(LogicalPlanBuilder::from(LogicalPlanBuilder::except(
                self.all(resource_type)?.build()?,
                matches.build()?,
                false,
            )?));
        }
        Ok(matches)
    }

    /// A composite parameter whose components are elements of the resource
    /// itself (`Observation?code-value-quantity=…`): each component is
    /// matched through its own parameter on the same resource. Composites
    /// over repeating parts (`component-code-value-quantity`) need both parts
    /// in the same repetition, which the per-parameter index cannot tell.
    fn composite(
        &self,
        resource_type: &str,
        param: &SearchParam,
        values: &[SearchValue],
    ) -> Result<LogicalPlanBuilder, CohortError> {
        let unsupported = |reason: &str| CohortError::Unsupported {
            param: param.code.clone(),
            reason: reason.to_string(),
        };
        if !is_compilable(param, resource_type) {
            return Err(unsupported(
                "composite parameters over repeating elements are not supported yet; search the parts separately",
            ));
        }
        let mut alternatives: Option<LogicalPlan> = None;
        for value in values {
            let SearchValue::Composite(parts) = value else {
                return Err(unsupported("value is not a composite"));
            };
            let mut plan: Option<LogicalPlan> = None;
            for (component, part) in param.components.iter().zip(parts) {
                let Some((code, _)) = self.registry.by_url(&component.definition) else {
                    return Err(unsupported("unknown component"));
                };
                let Some(component_param) = self.registry.get(resource_type, code) else {
                    return Err(unsupported("component is not a parameter of the type"));
                };
                let next = self
                    .param(resource_type, component_param, None, std::slice::from_ref(part))?
                    .build()?;
                plan = Some(match plan {
                    None => next,
                    Some(previous) => self.same_resource(previous, next)?,
                });
            }
            let Some(plan) = plan else {
                return Err(unsupported("no components"));
            };
            alternatives = Some(match alternatives {
                None => plan,
                Some(previous) => LogicalPlanBuilder::from(previous).union(plan)?.build()?,
            });
        }
        let plan = alternatives.ok_or_else(|| unsupported("no value"))?;
        Ok(LogicalPlanBuilder::from(plan))
    }
}

/// Whether the compiler accepts `param` of `resource_type` in a filter
/// (with some value and no modifier): every indexed parameter but a
/// composite over repeating elements (`component-code-value-quantity`),
/// whose parts must hold in the same repetition, which the per-parameter
/// index cannot tell. The CapabilityStatement lists exactly these.
pub fn is_compilable(param: &SearchParam, resource_type: &str) -> bool {
    param.param_type != ParamType::Composite || param.expression.trim() == resource_type
}

/// Whether `param` may yield Identifiers (so `:of-type` applies): false only
/// when every branch of its expression is `Type.element` for an element
/// the model knows is of another type.
fn may_yield_identifiers(param: &SearchParam, resource_type: &str) -> bool {
    use crate::fhirpath::ast::{BinaryOp, Expr as PathExpr};
    fn branch(expr: &PathExpr, resource_type: &str, model: &crate::fhir::model::FhirModel) -> bool {
        match expr {
            PathExpr::Binary(BinaryOp::Union, a, b) => {
                branch(a, resource_type, model) || branch(b, resource_type, model)
            }
            PathExpr::Member(target, name) if matches!(target.as_ref(), PathExpr::Identifier(t) if t == resource_type) => {
                model
                    .element(resource_type, name)
                    .is_none_or(|e| e.types.contains(&"Identifier"))
            }
            _ => true,
        }
    }
    match (&param.path, crate::fhir::model::FhirModel::r4()) {
        (Some(path), Ok(model)) => branch(path.ast(), resource_type, model),
        _ => true,
    }
}

/// Whether `param` yields at most one value per resource of `resource_type`:
/// its expression is a chain of non-repeating elements from the resource
/// (`Encounter.period`, `Resource.meta.lastUpdated`), the last of which
/// cannot hold a Timing (whose events are several dates).
fn single_valued(param: &SearchParam, resource_type: &str) -> bool {
    use crate::fhir::model::FhirModel;
    use crate::fhirpath::ast::Expr as PathExpr;
    /// The owner of the children of the single value `expr` yields.
    fn owner<'m>(expr: &PathExpr, resource_type: &'m str, model: &'m FhirModel) -> Option<&'m str> {
        match expr {
            PathExpr::Identifier(t) if t == resource_type || t == "Resource" || t == "DomainResource" => {
                Some(resource_type)
            }
            PathExpr::Member(target, name) => {
                let element = model.element(owner(target, resource_type, model)?, name)?;
                if element.repeating || element.types.contains(&"Timing") {
                    return None;
                }
                element.children_owner.or_else(|| element.types.first().copied())
            }
            _ => None,
        }
    }
    let (Some(path), Ok(model)) = (&param.path, FhirModel::r4()) else {
        return false;
    };
    matches!(path.ast(), PathExpr::Member(..)) && owner(path.ast(), resource_type, model).is_some()
}

fn value_filter(
    kind: IndexKind,
    param: &str,
    modifier: Option<&Modifier>,
    value: &SearchValue,
) -> Result<Expr, CohortError> {
    match kind {
        IndexKind::Token => predicate::token(param, modifier, value),
        IndexKind::Date => predicate::date(param, value),
        IndexKind::String => predicate::string(param, modifier, value),
        IndexKind::Reference => predicate::reference(param, modifier, value),
        IndexKind::Quantity => predicate::quantity(param, value),
        IndexKind::Number => predicate::number(param, value),
        IndexKind::Uri => predicate::uri(param, modifier, value),
    }
}

#[cfg(test)]
mod tests {
    use super::single_valued;
    use crate::search::SearchRegistry;

    /// Single-valued date parameters become one range scan placed after
    /// the other clauses (the probe side of the same-resource joins), so a
    /// broad `_lastUpdated` written first no longer builds a hash table of
    /// every resource of the type.
    #[test]
    fn single_valued_follows_non_repeating_chains() {
        let registry = SearchRegistry::r4().expect("registry");
        let single = |resource_type: &str, code: &str| {
            single_valued(registry.get(resource_type, code).expect(code), resource_type)
        };
        assert!(single("Observation", "_lastUpdated"), "Resource.meta.lastUpdated");
        assert!(single("Encounter", "date"), "Encounter.period");
        assert!(!single("Observation", "date"), "effective[x] may be a Timing");
        assert!(!single("Patient", "given"), "HumanName repeats");
        assert!(!single("Observation", "category"), "category repeats");
    }
}
