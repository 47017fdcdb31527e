//! The ViewDefinition resource, parsed and validated into a compiled plan
//! (every FHIRPath parsed once).

use std::collections::HashSet;

use serde_json::Value as Json;

use super::ViewError;
use crate::fhirpath::FhirPath;
use crate::fhirpath::ast::Expr;

/// How a selection iterates.
#[derive(Debug, Clone)]
pub enum Iteration {
    /// `forEach`: one focus per item, none → no rows.
    ForEach(FhirPath),
    /// `forEachOrNull`: like forEach, none → one row of nulls.
    ForEachOrNull(FhirPath),
    /// `repeat`: every node reachable through the paths, recursively.
    Repeat(Vec<FhirPath>),
}

/// A column of the view.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name (unique in the view).
    pub name: String,
    /// The FHIRPath giving its value.
    pub path: FhirPath,
    /// `collection: true`: the whole result as a list.
    pub collection: bool,
    /// `type`, if given (a FHIR type code).
    pub fhir_type: Option<String>,
    /// Index in the view's column order.
    pub index: usize,
}

/// A selection structure.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Its own columns.
    pub columns: Vec<Column>,
    /// Nested selections.
    pub selects: Vec<Select>,
    /// Iteration, if any.
    pub iteration: Option<Iteration>,
    /// `unionAll` branches.
    pub union_all: Vec<Select>,
}

/// A validated ViewDefinition.
#[derive(Debug, Clone)]
pub struct ViewDefinition {
    /// `name`, if given.
    pub name: Option<String>,
    /// The resource type it reads.
    pub resource: String,
    /// Constants (`%name`), as JSON values with their FHIR type.
    pub constants: Vec<(String, String, Json)>,
    /// The root selections (cross-joined).
    pub select: Vec<Select>,
    /// `where` filters: all must be true.
    pub where_paths: Vec<FhirPath>,
    /// All columns in output order.
    pub columns: Vec<Column>,
}

fn is_sql_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic()) && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Variables the runner always provides.
const BUILTIN_VARIABLES: [&str; 7] = [
    "resource",
    "context",
    "rootResource",
    "rowIndex",
    "ucum",
    "sct",
    "loinc",
];

struct Parser<'c> {
    constants: &'c HashSet<String>,
    names: HashSet<String>,
}

fn externals(expr: &Expr, out: &mut Vec<String>) {
    use Expr::*;
    match expr {
        External(name) => out.push(name.clone()),
        Function { target, args, .. } => {
            if let Some(t) = target {
                externals(t, out);
            }
            args.iter().for_each(|a| externals(a, out));
        }
        Member(t, _) | Negate(t) | Is(t, _) | As(t, _) => externals(t, out),
        Indexer(a, b) | Binary(_, a, b) => {
            externals(a, out);
            externals(b, out);
        }
        Literal(_) | Identifier(_) | This | Index | Total => {}
    }
}

impl Parser<'_> {
    fn path(&self, value: &Json, at: &str) -> Result<FhirPath, ViewError> {
        let text = value
            .as_str()
            .ok_or_else(|| ViewError::invalid(at, "must be a FHIRPath string"))?;
        let path = FhirPath::parse(text).map_err(|source| ViewError::Path {
            at: at.to_string(),
            source,
        })?;
        let mut used = Vec::new();
        externals(path.ast(), &mut used);
        if let Some(unknown) = used
            .iter()
            .find(|n| !self.constants.contains(*n) && !BUILTIN_VARIABLES.contains(&n.as_str()))
        {
            return Err(ViewError::invalid(
                at,
                &format!("'{text}' uses %{unknown}, which is no constant of this view"),
            ));
        }
        Ok(path)
    }

    fn select(&mut self, value: &Json, at: &str) -> Result<Select, ViewError> {
        let obj = value
            .as_object()
            .ok_or_else(|| ViewError::invalid(at, "must be an object"))?;
        let mut select = Select {
            iteration: self.iteration(obj, at)?,
            ..Default::default()
        };
        if let Some(columns) = obj.get("column") {
            let columns = columns
                .as_array()
                .ok_or_else(|| ViewError::invalid(&format!("{at}.column"), "must be a list"))?;
            for (i, c) in columns.iter().enumerate() {
                select.columns.push(self.column(c, &format!("{at}.column[{i}]"))?);
            }
        }
        if let Some(selects) = obj.get("select") {
            let selects = selects
                .as_array()
                .ok_or_else(|| ViewError::invalid(&format!("{at}.select"), "must be a list"))?;
            for (i, s) in selects.iter().enumerate() {
                select.selects.push(self.select(s, &format!("{at}.select[{i}]"))?);
            }
        }
        if let Some(branches) = obj.get("unionAll") {
            select.union_all = self.union_all(branches, at)?;
        }
        Ok(select)
    }

    /// The select's `forEach`, `forEachOrNull` or `repeat` (at most one).
    fn iteration(&mut self, obj: &serde_json::Map<String, Json>, at: &str) -> Result<Option<Iteration>, ViewError> {
        let iterations = ["forEach", "forEachOrNull", "repeat"]
            .iter()
            .filter(|k| obj.contains_key(**k))
            .count();
        if iterations > 1 {
            return Err(ViewError::invalid(
                at,
                "may have only one of forEach, forEachOrNull and repeat",
            ));
        }
        Ok(if let Some(p) = obj.get("forEach") {
            Some(Iteration::ForEach(self.path(p, &format!("{at}.forEach"))?))
        } else if let Some(p) = obj.get("forEachOrNull") {
            Some(Iteration::ForEachOrNull(self.path(p, &format!("{at}.forEachOrNull"))?))
        } else if let Some(r) = obj.get("repeat") {
            let paths = r
                .as_array()
                .ok_or_else(|| ViewError::invalid(&format!("{at}.repeat"), "must be a list of FHIRPaths"))?;
            let paths = paths
                .iter()
                .enumerate()
                .map(|(i, p)| self.path(p, &format!("{at}.repeat[{i}]")))
                .collect::<Result<_, _>>()?;
            Some(Iteration::Repeat(paths))
        } else {
            None
        })
    }

    /// One column (`at` is its place, `select[0].column[1]`): a SQL name
    /// unique in the view, a path, `collection` and `type`.
    fn column(&mut self, c: &Json, at: &str) -> Result<Column, ViewError> {
        let name = c
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| ViewError::invalid(at, "needs a name"))?;
        if !is_sql_name(name) {
            return Err(ViewError::invalid(
                at,
                &format!("name '{name}' must match ^[A-Za-z][A-Za-z0-9_]*$"),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(ViewError::invalid(at, &format!("column '{name}' is already defined")));
        }
        let path = self.path(c.get("path").unwrap_or(&Json::Null), &format!("{at}.path"))?;
        let collection = match c.get("collection") {
            None | Some(Json::Null) => false,
            Some(Json::Bool(b)) => *b,
            Some(_) => return Err(ViewError::invalid(at, "collection must be a boolean")),
        };
        Ok(Column {
            name: name.to_string(),
            path,
            collection,
            fhir_type: c.get("type").and_then(Json::as_str).map(str::to_string),
            index: 0,
        })
    }

    /// The `unionAll` branches of the select at `at`: each a select, all
    /// with the same column names in the same order.
    fn union_all(&mut self, branches: &Json, at: &str) -> Result<Vec<Select>, ViewError> {
        let branches = branches
            .as_array()
            .ok_or_else(|| ViewError::invalid(&format!("{at}.unionAll"), "must be a list"))?;
        let mut first_names: Option<Vec<String>> = None;
        let mut out = Vec::with_capacity(branches.len());
        for (i, b) in branches.iter().enumerate() {
            // Branches share their column names: check them apart from the uniqueness rule.
            let outer = std::mem::take(&mut self.names);
            let branch = self.select(b, &format!("{at}.unionAll[{i}]"));
            self.names = outer;
            let branch = branch?;
            let names: Vec<String> = all_columns(&branch).iter().map(|c| c.name.clone()).collect();
            match &first_names {
                None => first_names = Some(names),
                Some(expected) if *expected != names => {
                    return Err(ViewError::invalid(
                        &format!("{at}.unionAll[{i}]"),
                        &format!(
                            "columns {names:?} differ from the first branch's {expected:?} (same names in the same order required)"
                        ),
                    ));
                }
                Some(_) => {}
            }
            out.push(branch);
        }
        for name in first_names.unwrap_or_default() {
            if !self.names.insert(name.clone()) {
                return Err(ViewError::invalid(at, &format!("column '{name}' is already defined")));
            }
        }
        Ok(out)
    }
}

/// Numbers columns in output order; every unionAll branch maps onto the
/// positions of the first branch's columns.
fn number_columns(select: &mut Select, next: &mut usize) {
    for c in &mut select.columns {
        c.index = *next;
        *next += 1;
    }
    for s in &mut select.selects {
        number_columns(s, next);
    }
    let start = *next;
    for (i, branch) in select.union_all.iter_mut().enumerate() {
        let mut n = start;
        number_columns(branch, &mut n);
        if i == 0 {
            *next = n;
        }
    }
}

/// The columns of a selection in output order: own, nested selects, then the
/// first unionAll branch.
pub fn all_columns(select: &Select) -> Vec<Column> {
    let mut out = select.columns.clone();
    for s in &select.selects {
        out.extend(all_columns(s));
    }
    if let Some(first) = select.union_all.first() {
        out.extend(all_columns(first));
    }
    out
}

impl ViewDefinition {
    /// Parses and validates a ViewDefinition given as JSON.
    pub fn from_json(view: &Json) -> Result<Self, ViewError> {
        let obj = view
            .as_object()
            .ok_or_else(|| ViewError::invalid("ViewDefinition", "must be a JSON object"))?;
        let resource = obj
            .get("resource")
            .and_then(Json::as_str)
            .ok_or_else(|| {
                ViewError::invalid(
                    "ViewDefinition.resource",
                    "is required (the FHIR resource type the view reads)",
                )
            })?
            .to_string();
        let name = obj.get("name").and_then(Json::as_str).map(str::to_string);
        let mut constants = Vec::new();
        if let Some(list) = obj.get("constant") {
            let list = list
                .as_array()
                .ok_or_else(|| ViewError::invalid("constant", "must be a list"))?;
            for (i, c) in list.iter().enumerate() {
                let at = format!("constant[{i}]");
                let cname = c
                    .get("name")
                    .and_then(Json::as_str)
                    .ok_or_else(|| ViewError::invalid(&at, "needs a name"))?;
                let values: Vec<(&String, &Json)> = c
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| k.starts_with("value"))
                    .collect();
                let [(key, value)] = values.as_slice() else {
                    return Err(ViewError::invalid(
                        &at,
                        &format!("constant '{cname}' needs exactly one value[x]"),
                    ));
                };
                let mut fhir_type = key["value".len()..].to_string();
                if let Some(first) = fhir_type.get_mut(0..1) {
                    first.make_ascii_lowercase();
                }
                constants.push((cname.to_string(), fhir_type, (*value).clone()));
            }
        }
        let constant_names: HashSet<String> = constants.iter().map(|(n, _, _)| n.clone()).collect();
        let mut parser = Parser {
            constants: &constant_names,
            names: HashSet::new(),
        };
        let selects = obj
            .get("select")
            .and_then(Json::as_array)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ViewError::invalid("ViewDefinition.select", "needs at least one selection"))?;
        let mut select = Vec::new();
        for (i, s) in selects.iter().enumerate() {
            select.push(parser.select(s, &format!("select[{i}]"))?);
        }
        let mut where_paths = Vec::new();
        if let Some(list) = obj.get("where") {
            let list = list
                .as_array()
                .ok_or_else(|| ViewError::invalid("where", "must be a list"))?;
            for (i, w) in list.iter().enumerate() {
                where_paths.push(parser.path(w.get("path").unwrap_or(&Json::Null), &format!("where[{i}].path"))?);
            }
        }
        let mut next = 0;
        for s in &mut select {
            number_columns(s, &mut next);
        }
        let columns: Vec<Column> = select.iter().flat_map(all_columns).collect();
        Ok(Self {
            name,
            resource,
            constants,
            select,
            where_paths,
            columns,
        })
    }
}
