//! Navigation paths resolved against the FHIR model once, ahead of evaluation.
//!
//! Most expressions that ingest evaluates per resource (search parameters
//! such as `Observation.code`, `(Observation.value as Quantity)`; view
//! columns such as `code.coding.first().code`) are member chains from a
//! focus whose type is always the same. The general evaluator looks every
//! step's element up in the model (two hash lookups of strings), builds a
//! collection per step and dispatches functions by name. A [`CompiledPath`]
//! does the look-ups once, for the focus type it is compiled for: a step
//! knows its JSON name, its type and where its children are defined, and a
//! type filter on a choice element (`value.ofType(Quantity)`) becomes the
//! choice's one JSON name (`valueQuantity`).
//!
//! A compiled path yields exactly what the general evaluator yields: it
//! compiles only shapes whose meaning it reproduces (member steps, choice
//! elements, `first()`, `ofType`/`as` with a statically known answer,
//! `where(…)`, a final `getResourceKey()`, `getReferenceKey([T])`,
//! `count()` or `exists()`, any other final function call (evaluated by the
//! general functions), and `|`), and it hands back to the general evaluator
//! at run time when the data holds something it does not model (a
//! primitive's `_name` companion with extensions). Member chains are walked
//! depth first, appending the nodes they reach to the caller's buffer.

use super::FhirPathError;
use super::ast::{BinaryOp, Expr, TypeSpecifier};
use super::eval::{Evaluator, Scope, distinct};
use super::functions::{self, type_argument};
use super::value::{Collection, Node, Value};
use crate::fhir::model::FhirModel;
use crate::json::JsonValue;

/// One step of a compiled path.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// A non-choice element with one type.
    Member {
        /// JSON property name.
        name: Box<str>,
        /// The element's type code.
        fhir_type: &'static str,
        /// Where its children are defined.
        owner: Option<&'static str>,
    },
    /// A choice element (`value[x]`): the allowed type codes (all of them,
    /// or those a following type filter keeps).
    Choice {
        /// Element name without the type suffix.
        name: Box<str>,
        /// Type codes kept, in the model's order.
        types: Vec<&'static str>,
    },
    /// `first()`.
    First,
    /// A type filter that statically keeps nothing.
    Empty,
    /// `where(resolve() is T)` (how R4 search parameters pick references to
    /// one type): keeps references whose target type is `T` or derives
    /// from it, read from the reference text (or `Reference.type`).
    WhereResolvesTo(TypeSpecifier),
    /// `where(criteria)`: evaluated by the general function (keeps types).
    Where {
        /// The criteria.
        args: Vec<Expr>,
        /// Where the name starts, for error messages.
        pos: usize,
    },
}

/// A path compiled for one focus type.
#[derive(Debug, Clone)]
pub(super) enum CompiledPath {
    /// Steps from the focus.
    Steps(Vec<Step>),
    /// `a | b`.
    Union(Box<CompiledPath>, Box<CompiledPath>),
    /// `getResourceKey()` on the nodes of steps.
    ResourceKey(Vec<Step>),
    /// `getReferenceKey([T])` on the nodes of steps (`T`: the type name).
    ReferenceKey {
        /// The references.
        input: Vec<Step>,
        /// The target type asked for, if any.
        wanted: Option<String>,
    },
    /// `count()` of the nodes of steps.
    Count(Vec<Step>),
    /// `exists()` (no criteria) of the nodes of steps.
    Exists(Vec<Step>),
    /// Any other function applied last (`join(',')`), by the general
    /// function with the focus as its scope.
    Call {
        /// Its input.
        input: Box<CompiledPath>,
        /// Function name.
        name: Box<str>,
        /// Arguments, evaluated by the function.
        args: Vec<Expr>,
        /// Where the name starts.
        pos: usize,
    },
}

/// The static type of the collection a path yields so far: every item has
/// this FHIR type and children owner (`None`: not known statically).
#[derive(Clone, Copy)]
struct Shape {
    fhir_type: &'static str,
    owner: Option<&'static str>,
}

impl CompiledPath {
    /// Compiles `expr` for a focus of type `fhir_type` whose children are
    /// defined by `owner` (a type name or backbone path; for a resource, its
    /// type). `None` when the expression is not a shape this module
    /// reproduces exactly.
    pub(super) fn compile(
        expr: &Expr,
        fhir_type: &'static str,
        owner: &'static str,
        model: &'static FhirModel,
    ) -> Option<Self> {
        let focus = Shape {
            fhir_type,
            owner: Some(owner),
        };
        let (path, _) = compile_expr(expr, focus, model)?;
        Some(path)
    }

    /// Evaluates the path on `focus`; `Ok(None)` when the data needs the
    /// general evaluator.
    #[cfg(test)]
    pub(super) fn evaluate<'a>(
        &self,
        focus: &Node<'a>,
        evaluator: &Evaluator<'a, '_>,
        scope: &Scope<'a>,
    ) -> Result<Option<Collection<'a>>, FhirPathError> {
        let mut out = Vec::new();
        Ok(self.evaluate_into(focus, evaluator, scope, &mut out)?.then_some(out))
    }

    /// Whether evaluation calls general functions, which need the focus as
    /// their scope (the caller builds it only then).
    pub(super) fn uses_scope(&self) -> bool {
        match self {
            CompiledPath::Steps(steps) => !streams(steps),
            CompiledPath::Union(a, b) => a.uses_scope() || b.uses_scope(),
            CompiledPath::ResourceKey(steps)
            | CompiledPath::ReferenceKey { input: steps, .. }
            | CompiledPath::Count(steps)
            | CompiledPath::Exists(steps) => !streams(steps),
            CompiledPath::Call { .. } => true,
        }
    }

    /// Appends what the path yields on `focus` to `out`; `Ok(false)` (and
    /// `out` as it was) when the data needs the general evaluator. Member
    /// chains are walked depth first without intermediate collections. On
    /// an error `out` may hold part of the result.
    pub(super) fn evaluate_into<'a>(
        &self,
        focus: &Node<'a>,
        evaluator: &Evaluator<'a, '_>,
        scope: &Scope<'a>,
        out: &mut Collection<'a>,
    ) -> Result<bool, FhirPathError> {
        let start = out.len();
        let complete = match self {
            CompiledPath::Steps(steps) => {
                for_each_node(steps, focus, evaluator, scope, |node| out.push(Value::Node(node)))?
            }
            CompiledPath::Union(a, b) => {
                let complete =
                    a.evaluate_into(focus, evaluator, scope, out)? && b.evaluate_into(focus, evaluator, scope, out)?;
                if complete {
                    let both: Vec<Value<'a>> = out.drain(start..).collect();
                    out.extend(distinct(both));
                }
                complete
            }
            CompiledPath::ResourceKey(steps) => for_each_node(steps, focus, evaluator, scope, |node| {
                out.extend(functions::resource_key(&node));
            })?,
            CompiledPath::ReferenceKey { input, wanted } => for_each_node(input, focus, evaluator, scope, |node| {
                out.extend(functions::reference_key(&node, wanted.as_deref()));
            })?,
            CompiledPath::Count(steps) | CompiledPath::Exists(steps) => {
                let mut count = 0i64;
                let complete = for_each_node(steps, focus, evaluator, scope, |_| count += 1)?;
                out.push(match self {
                    CompiledPath::Count(_) => Value::Integer(count),
                    _ => Value::Boolean(count > 0),
                });
                complete
            }
            CompiledPath::Call { input, name, args, pos } => {
                let mut items = Vec::new();
                let complete = input.evaluate_into(focus, evaluator, scope, &mut items)?;
                if complete {
                    out.extend(functions::call(evaluator, name, *pos, items, args, scope)?);
                }
                complete
            }
        };
        if !complete {
            out.truncate(start);
        }
        Ok(complete)
    }
}

/// What a [`DirectPath`] makes of the nodes its steps reach.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectEnd {
    /// The nodes themselves.
    Nodes,
    /// `getResourceKey()`.
    ResourceKey,
    /// `getReferenceKey([T])` (`T`: the resource type asked for, if any).
    ReferenceKey(Option<&'static str>),
    /// `exists()` without criteria.
    Exists,
    /// `count()`.
    Count,
}

/// One item a [`DirectPath`] yields.
#[derive(Debug, Clone, Copy)]
pub enum DirectValue<'a> {
    /// A node of the resource.
    Node(Node<'a>),
    /// A key (`getResourceKey()`, `getReferenceKey()`), borrowed from the
    /// resource.
    Key(&'a str),
    /// `exists()`.
    Boolean(bool),
    /// `count()`.
    Integer(i64),
}

/// A path that reads a focus's JSON with no evaluator around it: member
/// and choice steps, `first()`, type filters decided when it was compiled,
/// `where(resolve() is T)`, and at the end the nodes, `getResourceKey()`,
/// `getReferenceKey([T])`, `exists()` or `count()`. For callers that run
/// one expression over many foci of one type and want the values, not a
/// collection (flat views). It yields what the general evaluator yields,
/// in the same order, or hands back when the data needs the evaluator (a
/// primitive's `_name` companion).
#[derive(Debug, Clone)]
pub struct DirectPath {
    steps: Vec<Step>,
    end: DirectEnd,
    model: &'static FhirModel,
    /// Every step is a plain member (`period.start`): then a loop follows
    /// the chain while the data holds single objects (see
    /// [`DirectPath::chain`]), the walk only when it meets an array.
    members_only: bool,
}

/// Where following a chain of members ended.
enum Chain<'a> {
    /// At this one node.
    Node(Node<'a>),
    /// At nothing (a member absent or null).
    Nothing,
    /// At an array or a `_name` companion: the walk decides.
    Walk,
}

impl DirectPath {
    /// Compiles `expr` for a focus of type `fhir_type` whose children are
    /// defined by `owner`; `None` when it is not one of the shapes above.
    pub(super) fn compile(
        expr: &Expr,
        fhir_type: &'static str,
        owner: &'static str,
        model: &'static FhirModel,
    ) -> Option<Self> {
        let (steps, end) = match CompiledPath::compile(expr, fhir_type, owner, model)? {
            CompiledPath::Steps(steps) => (steps, DirectEnd::Nodes),
            CompiledPath::ResourceKey(steps) => (steps, DirectEnd::ResourceKey),
            CompiledPath::ReferenceKey { input, wanted } => {
                // A type that is not a resource type is left to the general
                // function (it then matches nothing).
                let wanted = match wanted {
                    Some(name) => Some(crate::fhir::ResourceTypes::r4().ok()?.get(&name)?),
                    None => None,
                };
                (input, DirectEnd::ReferenceKey(wanted))
            }
            CompiledPath::Exists(steps) => (steps, DirectEnd::Exists),
            CompiledPath::Count(steps) => (steps, DirectEnd::Count),
            CompiledPath::Union(..) | CompiledPath::Call { .. } => return None,
        };
        let members_only = !steps.is_empty() && steps.iter().all(|s| matches!(s, Step::Member { .. }));
        streams(&steps).then_some(Self {
            steps,
            end,
            model,
            members_only,
        })
    }

    /// The JSON name of the path's first step when it is a plain member
    /// (`subject` of `subject.getReferenceKey(Patient)`): a caller that
    /// finds it in the focus itself hands its value to
    /// [`DirectPath::for_each_from_member`].
    pub fn first_member(&self) -> Option<&str> {
        match self.steps.first() {
            Some(Step::Member { name, .. }) => Some(name),
            _ => None,
        }
    }

    /// Calls `sink` with each item the path yields on `focus` (a node of
    /// the type it was compiled for), in order. `false` when the data needs
    /// the general evaluator: the items passed so far are then incomplete.
    pub fn for_each<'a>(&self, focus: Node<'a>, mut sink: impl FnMut(DirectValue<'a>)) -> bool {
        if self.members_only
            && let Some(Step::Member { name, .. }) = self.steps.first()
        {
            let chain = match member_value(focus.json, name) {
                Some(Some(value)) => self.chain(value),
                Some(None) => Chain::Nothing,
                None => Chain::Walk,
            };
            if self.end_chain(chain, &mut sink) {
                return true;
            }
        }
        self.run(sink, |evaluator, taken, mut nodes| {
            walk(&self.steps, 0, focus, taken, evaluator, &mut nodes)
        })
    }

    /// Like [`DirectPath::for_each`], on a focus whose member named
    /// [`DirectPath::first_member`] the caller looked up: `member` is its
    /// value (`None`: absent). The caller also checked that the focus has
    /// no `_name` companion of it.
    pub fn for_each_from_member<'a>(
        &self,
        member: Option<&'a JsonValue<'a>>,
        mut sink: impl FnMut(DirectValue<'a>),
    ) -> bool {
        if self.members_only {
            let chain = member.map_or(Chain::Nothing, |value| self.chain(value));
            if self.end_chain(chain, &mut sink) {
                return true;
            }
        }
        self.run(sink, |evaluator, taken, mut nodes| match (self.steps.first(), member) {
            (Some(Step::Member { fhir_type, owner, .. }), Some(value)) => {
                walk_items(&self.steps, 1, value, fhir_type, *owner, taken, evaluator, &mut nodes)
            }
            (Some(Step::Member { .. }), None) => Flow::Continue,
            // Not a member path: no caller should get here.
            _ => Flow::Fallback,
        })
    }

    /// Follows the members from `value`, what the first step found, while
    /// each is a single value (what the walk would do, without recursion,
    /// closures or a `first()` bookkeeping).
    fn chain<'a>(&self, mut value: &'a JsonValue<'a>) -> Chain<'a> {
        let mut at = 0;
        loop {
            let Some(Step::Member { fhir_type, owner, .. }) = self.steps.get(at) else {
                return Chain::Walk;
            };
            match value {
                JsonValue::Array(_) => return Chain::Walk,
                JsonValue::Null => return Chain::Nothing,
                _ => {}
            }
            let Some(Step::Member { name, .. }) = self.steps.get(at + 1) else {
                return Chain::Node(Node {
                    json: value,
                    fhir_type: Some(fhir_type),
                    children_owner: *owner,
                    primitive_element: None,
                });
            };
            match member_value(value, name) {
                Some(Some(next)) => value = next,
                Some(None) => return Chain::Nothing,
                None => return Chain::Walk,
            }
            at += 1;
        }
    }

    /// Passes what a chain ended at to `sink`; `false` when the walk must
    /// decide (nothing passed then).
    fn end_chain<'a>(&self, chain: Chain<'a>, sink: &mut impl FnMut(DirectValue<'a>)) -> bool {
        let node = match chain {
            Chain::Walk => return false,
            Chain::Nothing => None,
            Chain::Node(node) => Some(node),
        };
        let mut count = 0i64;
        if let Some(node) = node {
            self.emit(node, sink, &mut count);
        }
        self.emit_end(count, sink);
        true
    }

    /// The path's items of one node reached: the node, or its key; for
    /// `exists()`/`count()` it is counted.
    fn emit<'a>(&self, node: Node<'a>, sink: &mut impl FnMut(DirectValue<'a>), count: &mut i64) {
        match self.end {
            DirectEnd::Nodes => sink(DirectValue::Node(node)),
            DirectEnd::ResourceKey => {
                if let Some(key) = functions::resource_key_str(&node) {
                    sink(DirectValue::Key(key));
                }
            }
            DirectEnd::ReferenceKey(wanted) => {
                let key = match wanted {
                    Some(wanted) => functions::reference_key_of_type(&node, wanted),
                    None => functions::reference_key_str(&node, None),
                };
                if let Some(key) = key {
                    sink(DirectValue::Key(key));
                }
            }
            DirectEnd::Exists | DirectEnd::Count => *count += 1,
        }
    }

    /// The item of `exists()`/`count()` once every node is counted.
    fn emit_end<'a>(&self, count: i64, sink: &mut impl FnMut(DirectValue<'a>)) {
        match self.end {
            DirectEnd::Exists => sink(DirectValue::Boolean(count > 0)),
            DirectEnd::Count => sink(DirectValue::Integer(count)),
            _ => {}
        }
    }

    /// Walks with `start` and makes the path's items of the nodes reached.
    fn run<'a>(
        &self,
        mut sink: impl FnMut(DirectValue<'a>),
        start: impl FnOnce(&Evaluator<'a, '_>, &mut u64, &mut dyn FnMut(Node<'a>)) -> Flow,
    ) -> bool {
        static NO_VARIABLES: std::sync::OnceLock<std::collections::HashMap<String, Collection<'static>>> =
            std::sync::OnceLock::new();
        // Only `where(resolve() is T)` consults it, for type tests.
        let evaluator = Evaluator {
            model: self.model,
            resource: &[],
            variables: NO_VARIABLES.get_or_init(Default::default),
        };
        let mut taken = 0u64;
        let mut count = 0i64;
        let flow = start(&evaluator, &mut taken, &mut |node: Node<'a>| {
            self.emit(node, &mut sink, &mut count)
        });
        self.emit_end(count, &mut sink);
        flow != Flow::Fallback
    }
}

/// The static type of what `expr` yields on a focus of `fhir_type`
/// (children defined by `owner`): the type code and children owner every
/// item has, when the compiled form knows it.
pub(super) fn result_type(
    expr: &Expr,
    fhir_type: &'static str,
    owner: &'static str,
    model: &'static FhirModel,
) -> Option<(&'static str, &'static str)> {
    let focus = Shape {
        fhir_type,
        owner: Some(owner),
    };
    let (_, shape) = compile_expr(expr, focus, model)?;
    let shape = shape?;
    Some((shape.fhir_type, shape.owner?))
}

/// Compiles `expr`; returns the path and the shape of its result (`None`
/// shape: the items' types are not known, so no member step may follow).
fn compile_expr(expr: &Expr, focus: Shape, model: &'static FhirModel) -> Option<(CompiledPath, Option<Shape>)> {
    match expr {
        // `Patient` at the root of `Patient.name` (an identifier always
        // starts a path): the focus itself, when it is a resource of that
        // type (anything else is left to the general evaluator).
        Expr::Identifier(name) if name.starts_with(|c: char| c.is_ascii_uppercase()) => {
            (model.is_resource(focus.fhir_type) && model.derives_from(focus.fhir_type, name))
                .then(|| (CompiledPath::Steps(Vec::new()), Some(focus)))
        }
        Expr::Identifier(name) => {
            let mut steps = Vec::new();
            let shape = member_step(focus, name, model, &mut steps)?;
            Some((CompiledPath::Steps(steps), shape))
        }
        Expr::Member(target, name) => {
            let (path, shape) = compile_expr(target, focus, model)?;
            let CompiledPath::Steps(mut steps) = path else {
                return None;
            };
            let shape = member_step(shape?, name, model, &mut steps)?;
            Some((CompiledPath::Steps(steps), shape))
        }
        Expr::As(target, spec) => type_filter(compile_expr(target, focus, model)?, spec, model),
        Expr::Binary(BinaryOp::Union, a, b) => {
            let (a, _) = compile_expr(a, focus, model)?;
            let (b, _) = compile_expr(b, focus, model)?;
            Some((CompiledPath::Union(Box::new(a), Box::new(b)), None))
        }
        Expr::Function {
            target,
            name,
            args,
            pos,
        } => {
            let input = match target {
                Some(t) => compile_expr(t, focus, model)?,
                None => (CompiledPath::Steps(Vec::new()), Some(focus)),
            };
            match (name.as_str(), args.as_slice(), input) {
                ("first", [], (CompiledPath::Steps(mut steps), shape)) => {
                    steps.push(Step::First);
                    Some((CompiledPath::Steps(steps), shape))
                }
                ("ofType" | "as", [arg], input) => type_filter(input, &type_argument(arg).ok()?, model),
                ("where", [Expr::Is(inner, spec)], (CompiledPath::Steps(mut steps), shape))
                    if matches!(inner.as_ref(), Expr::Function { target: None, name, args, .. } if name == "resolve" && args.is_empty())
                        && known_type(spec, model) =>
                {
                    steps.push(Step::WhereResolvesTo(spec.clone()));
                    Some((CompiledPath::Steps(steps), shape))
                }
                ("where", [_], (CompiledPath::Steps(mut steps), shape)) => {
                    steps.push(Step::Where {
                        args: args.clone(),
                        pos: *pos,
                    });
                    Some((CompiledPath::Steps(steps), shape))
                }
                ("getResourceKey", [], (CompiledPath::Steps(steps), _)) => {
                    Some((CompiledPath::ResourceKey(steps), None))
                }
                ("getReferenceKey", [], (CompiledPath::Steps(input), _)) => {
                    Some((CompiledPath::ReferenceKey { input, wanted: None }, None))
                }
                ("getReferenceKey", [arg], (CompiledPath::Steps(input), _)) => Some((
                    CompiledPath::ReferenceKey {
                        input,
                        // A bad argument is an error the general function reports.
                        wanted: Some(type_argument(arg).ok()?.name),
                    },
                    None,
                )),
                ("count", [], (CompiledPath::Steps(steps), _)) => Some((CompiledPath::Count(steps), None)),
                ("exists", [], (CompiledPath::Steps(steps), _)) => Some((CompiledPath::Exists(steps), None)),
                (_, _, (input, _)) if functions::is_function(name) => Some((
                    CompiledPath::Call {
                        input: Box::new(input),
                        name: name.as_str().into(),
                        args: args.clone(),
                        pos: *pos,
                    },
                    None,
                )),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Appends the step for child `name` of items shaped `shape`.
fn member_step(shape: Shape, name: &str, model: &'static FhirModel, steps: &mut Vec<Step>) -> Option<Option<Shape>> {
    let def = model.element(shape.owner?, name)?;
    if def.choice {
        if def.types.contains(&"Resource") {
            return None;
        }
        let types = def.types.clone();
        let shape = choice_shape(&types);
        steps.push(Step::Choice {
            name: name.into(),
            types,
        });
        return Some(shape);
    }
    // One type, and not a resource (contained resources and Bundle entries
    // take their type from `resourceType`; the general evaluator does that).
    let [fhir_type] = def.types.as_slice() else {
        return None;
    };
    if *fhir_type == "Resource" {
        return None;
    }
    steps.push(Step::Member {
        name: name.into(),
        fhir_type,
        owner: def.children_owner,
    });
    Some(Some(Shape {
        fhir_type,
        owner: def.children_owner,
    }))
}

/// Runs `f` with an evaluator that has no resource or variables: type tests
/// decided at compile time use the general evaluator's own rules.
fn with_type_evaluator<R>(model: &'static FhirModel, f: impl FnOnce(&Evaluator<'static, '_>) -> R) -> R {
    let variables = std::collections::HashMap::new();
    f(&Evaluator {
        model,
        resource: &[],
        variables: &variables,
    })
}

/// Whether `spec` names a type the general evaluator knows (an unknown one
/// is an error it reports).
fn known_type(spec: &TypeSpecifier, model: &'static FhirModel) -> bool {
    with_type_evaluator(model, |evaluator| evaluator.check_type(spec).is_ok())
}

/// The shape of a choice element's items: known when one type is left.
fn choice_shape(types: &[&'static str]) -> Option<Shape> {
    match types {
        [only] => Some(Shape {
            fhir_type: only,
            owner: Some(only),
        }),
        _ => None,
    }
}

/// What `resolve() is T` gives for one reference node: the general
/// `resolve()`'s target type and its `is` test, without building the target.
fn resolves_to(node: &Node<'_>, spec: &TypeSpecifier, evaluator: &Evaluator<'_, '_>) -> bool {
    functions::reference_target(node.json).is_some_and(|(resource_type, _)| {
        evaluator.is_type(
            &Value::ReferenceTarget {
                resource_type,
                id: String::new(),
            },
            spec,
        )
    })
}

/// `ofType(T)` / `as T` on a compiled input: decided per type code now,
/// with the general evaluator's own type test.
fn type_filter(
    (path, shape): (CompiledPath, Option<Shape>),
    spec: &TypeSpecifier,
    model: &'static FhirModel,
) -> Option<(CompiledPath, Option<Shape>)> {
    let CompiledPath::Steps(mut steps) = path else {
        return None;
    };
    // An unknown type is an error the general evaluator reports.
    if !known_type(spec, model) {
        return None;
    }
    static NULL: JsonValue<'static> = JsonValue::Null;
    let keeps = |t: &'static str| {
        with_type_evaluator(model, |evaluator| {
            evaluator.is_type_exact(&Value::node(&NULL, Some(t), Some(t)), spec)
        })
    };
    match steps.last_mut() {
        Some(Step::Choice { types, .. }) => {
            types.retain(|t| keeps(t));
            let shape = choice_shape(types);
            Some((CompiledPath::Steps(steps), shape))
        }
        _ => {
            let shape = shape?;
            if !keeps(shape.fhir_type) {
                steps.push(Step::Empty);
            }
            Some((CompiledPath::Steps(steps), Some(shape)))
        }
    }
}

/// Whether `steps` can be walked depth first: no general `where`, and few
/// enough steps for a bit per `first()`.
fn streams(steps: &[Step]) -> bool {
    steps.len() <= 64 && !steps.iter().any(|s| matches!(s, Step::Where { .. }))
}

/// Calls `sink` on every node `steps` yield from `focus`, in order;
/// `Ok(false)` when the data needs the general evaluator (some nodes may
/// have been passed already).
fn for_each_node<'a>(
    steps: &[Step],
    focus: &Node<'a>,
    evaluator: &Evaluator<'a, '_>,
    scope: &Scope<'a>,
    mut sink: impl FnMut(Node<'a>),
) -> Result<bool, FhirPathError> {
    if streams(steps) {
        let mut taken = 0u64;
        return Ok(walk(steps, 0, *focus, &mut taken, evaluator, &mut sink) != Flow::Fallback);
    }
    let Some(items) = run_steps(steps, focus, evaluator, scope)? else {
        return Ok(false);
    };
    for item in items {
        if let Value::Node(node) = item {
            sink(node);
        }
    }
    Ok(true)
}

/// `key == name`, deciding most mismatches on length and then byte by
/// byte: a member step scans every key of its object, and FHIR element
/// names are short (`==` would call `memcmp` for each key of equal length).
fn same_name(key: &str, name: &str) -> bool {
    key.len() == name.len() && key.bytes().zip(name.bytes()).all(|(a, b)| a == b)
}

/// The value of member `name` of `json` as a member step finds it (the
/// last of duplicate keys; `Some(None)`: absent, or `json` is no object);
/// `None` when `json` has the `_name` companion (the general evaluator
/// pairs them).
fn member_value<'a>(json: &'a JsonValue<'a>, name: &str) -> Option<Option<&'a JsonValue<'a>>> {
    let mut value = None;
    for (key, v) in json.as_object().unwrap_or_default() {
        if same_name(key, name) {
            value = Some(v);
        } else if key.strip_prefix('_') == Some(name) {
            return None;
        }
    }
    Some(value)
}

/// How a depth-first walk goes on.
#[derive(PartialEq)]
enum Flow {
    /// On to the next item.
    Continue,
    /// A `first()` has its item: every later item would be dropped.
    Stop,
    /// The data needs the general evaluator.
    Fallback,
}

/// Walks `steps[at..]` from each item of `value` (an array's items, or the
/// value itself; nulls skipped) as a node of `fhir_type`, in order, until
/// a `first()` has its item or the data needs the general evaluator.
#[allow(clippy::too_many_arguments)]
fn walk_items<'a>(
    steps: &[Step],
    at: usize,
    value: &'a JsonValue<'a>,
    fhir_type: &'static str,
    owner: Option<&'static str>,
    taken: &mut u64,
    evaluator: &Evaluator<'a, '_>,
    sink: &mut impl FnMut(Node<'a>),
) -> Flow {
    let mut flow = Flow::Continue;
    value.for_each_item(|item| {
        if flow == Flow::Continue && !matches!(item, JsonValue::Null) {
            let child = Node {
                json: item,
                fhir_type: Some(fhir_type),
                children_owner: owner,
                primitive_element: None,
            };
            flow = walk(steps, at, child, taken, evaluator, sink);
        }
    });
    flow
}

/// Walks `steps[at..]` from `node` depth first, which visits the nodes in
/// the order the step-by-step collections hold them. `taken` has bit `i`
/// set once the `first()` at step `i` has passed its item.
fn walk<'a>(
    steps: &[Step],
    at: usize,
    node: Node<'a>,
    taken: &mut u64,
    evaluator: &Evaluator<'a, '_>,
    sink: &mut impl FnMut(Node<'a>),
) -> Flow {
    let Some(step) = steps.get(at) else {
        sink(node);
        return Flow::Continue;
    };
    let mut children = |value: &'a JsonValue<'a>, fhir_type: &'static str, owner: Option<&'static str>| {
        walk_items(steps, at + 1, value, fhir_type, owner, taken, evaluator, sink)
    };
    match step {
        Step::Member { name, fhir_type, owner } => match member_value(node.json, name) {
            Some(value) => value.map_or(Flow::Continue, |v| children(v, fhir_type, *owner)),
            None => Flow::Fallback,
        },
        Step::Choice { name, types } => {
            for (key, v) in node.json.as_object().unwrap_or_default() {
                if let Some(code) = key.strip_prefix(&**name).and_then(|suffix| choice_type(suffix, types)) {
                    let flow = children(v, code, Some(code));
                    if flow != Flow::Continue {
                        return flow;
                    }
                }
            }
            Flow::Continue
        }
        Step::First => {
            let bit = 1u64 << at;
            if *taken & bit != 0 {
                return Flow::Stop;
            }
            *taken |= bit;
            match walk(steps, at + 1, node, taken, evaluator, sink) {
                Flow::Fallback => Flow::Fallback,
                _ => Flow::Stop,
            }
        }
        Step::Empty => Flow::Continue,
        Step::WhereResolvesTo(spec) => {
            if resolves_to(&node, spec, evaluator) {
                walk(steps, at + 1, node, taken, evaluator, sink)
            } else {
                Flow::Continue
            }
        }
        // Not walked (see `streams`).
        Step::Where { .. } => Flow::Fallback,
    }
}

/// Runs member/choice/first/where steps from `focus`.
fn run_steps<'a>(
    steps: &[Step],
    focus: &Node<'a>,
    evaluator: &Evaluator<'a, '_>,
    scope: &Scope<'a>,
) -> Result<Option<Collection<'a>>, FhirPathError> {
    let mut current: Collection<'a> = vec![Value::Node(*focus)];
    for step in steps {
        let mut next = Vec::new();
        match step {
            Step::Member { name, fhir_type, owner } => {
                for item in &current {
                    let mut value = None;
                    for (key, v) in members(item) {
                        if **key == **name {
                            value = Some(v);
                        } else if key.strip_prefix('_') == Some(&**name) {
                            // Extensions on a primitive: the general evaluator
                            // pairs values with their companions.
                            return Ok(None);
                        }
                    }
                    if let Some(v) = value {
                        push_nodes(v, fhir_type, *owner, &mut next);
                    }
                }
            }
            Step::Choice { name, types } => {
                for item in &current {
                    for (key, v) in members(item) {
                        if let Some(code) = key.strip_prefix(&**name).and_then(|suffix| choice_type(suffix, types)) {
                            push_nodes(v, code, Some(code), &mut next);
                        }
                    }
                }
            }
            Step::First => {
                current.truncate(1);
                continue;
            }
            Step::Empty => return Ok(Some(Vec::new())),
            Step::WhereResolvesTo(spec) => {
                next = current
                    .into_iter()
                    .filter(|item| matches!(item, Value::Node(node) if resolves_to(node, spec, evaluator)))
                    .collect();
            }
            Step::Where { args, pos } => {
                next = functions::call(evaluator, "where", *pos, current, args, scope)?;
            }
        }
        current = next;
        if current.is_empty() {
            break;
        }
    }
    Ok(Some(current))
}

/// The members of an object node (none for anything else).
fn members<'a>(item: &Value<'a>) -> &'a [(std::borrow::Cow<'a, str>, JsonValue<'a>)] {
    match item {
        Value::Node(node) => node.json.as_object().unwrap_or_default(),
        _ => &[],
    }
}

/// Pushes `value` (each item, if an array; nulls skipped) as nodes of
/// `fhir_type`, as the general evaluator's `push_items` does.
fn push_nodes<'a>(
    value: &'a JsonValue<'a>,
    fhir_type: &'static str,
    owner: Option<&'static str>,
    out: &mut Collection<'a>,
) {
    value.for_each_item(|item| {
        if !matches!(item, JsonValue::Null) {
            out.push(Value::node(item, Some(fhir_type), owner));
        }
    });
}

/// The type code among `types` that a choice JSON name's suffix
/// (`Quantity` of `valueQuantity`) stands for: its first letter upper-cased.
fn choice_type(suffix: &str, types: &[&'static str]) -> Option<&'static str> {
    let first = *suffix.as_bytes().first()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    let rest = &suffix[1..];
    types
        .iter()
        .find(|code| {
            code.as_bytes().first().is_some_and(|f| f.eq_ignore_ascii_case(&first)) && code.get(1..) == Some(rest)
        })
        .copied()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::fhirpath::FhirPath;
    use crate::search::SearchRegistry;

    /// Compiled and general evaluation of `path` on `focus`, as comparable text.
    fn both<'a>(path: &FhirPath, focus: &Value<'a>, root: &[Value<'a>]) -> (Option<String>, String) {
        let model = FhirModel::r4().unwrap();
        let variables = HashMap::new();
        let evaluator = Evaluator {
            model,
            resource: root,
            variables: &variables,
        };
        let scope = Scope::new(vec![focus.clone()]);
        let general = format!("{:?}", evaluator.eval(path.ast(), &scope));
        let Value::Node(node) = focus else {
            panic!("focus must be a node")
        };
        let compiled = CompiledPath::compile(path.ast(), node.fhir_type.unwrap(), node.children_owner.unwrap(), model)
            .map(|c| match c.evaluate(node, &evaluator, &scope) {
                Ok(Some(result)) => format!("{:?}", Ok::<_, FhirPathError>(result)),
                Ok(None) => general.clone(),
                Err(e) => format!("{:?}", Err::<Collection, _>(e)),
            });
        (compiled, general)
    }

    /// Shapes where walking depth first could differ from collecting step by
    /// step: `first()` after several branches, primitive companions before
    /// and after the first item, unions with duplicates, keys and counts.
    #[test]
    fn walked_paths_agree_with_the_general_evaluator_on_edge_shapes() {
        let model = FhirModel::r4().unwrap();
        let resources = [
            r#"{"resourceType":"Patient","id":"p","name":[{"family":"A"},{"given":["x","y"]},{"given":["z"],"_given":[{"extension":[{"url":"u","valueString":"e"}]}]}]}"#,
            r#"{"resourceType":"Patient","id":"p","name":[{"_given":[{"extension":[{"url":"u","valueString":"e"}]}]},{"given":["x"]}]}"#,
            r#"{"resourceType":"Patient","id":"p","name":[{"given":["x"],"family":"F"},{"given":["x"],"family":"F"}],"generalPractitioner":[{"reference":"urn:uuid:1","type":"Practitioner"},{"reference":"Organization/o"},{"reference":"Practitioner/2"}]}"#,
            r#"{"resourceType":"Observation","id":"o","status":"final","code":{"coding":[{"system":"s"},{"system":"t","display":"d"}]},"subject":{"reference":"Patient/p"},"valueQuantity":{"value":1.0,"unit":"%"}}"#,
            r#"{"resourceType":"Observation","id":"o","code":{"coding":[]},"component":[{"valueString":"a"},{"valueInteger":2},{"valueString":"b"}]}"#,
        ];
        let paths = [
            "name.given.first()",
            "name.first().given.first()",
            "name.given",
            "name.family.first()",
            "name.given | name.family",
            "name.given.count()",
            "name.family.exists()",
            "generalPractitioner.getReferenceKey()",
            "generalPractitioner.getReferenceKey(Practitioner)",
            "generalPractitioner.where(resolve() is Practitioner).first()",
            "getResourceKey()",
            "code.coding.first().display",
            "code.coding.display.first()",
            "code.coding.count()",
            "subject.getReferenceKey(Patient)",
            "subject.getReferenceKey(Group)",
            "value.ofType(Quantity).value",
            "component.value.ofType(string).first()",
            "component.value.ofType(integer)",
            "component.value.exists()",
            "name.given.join(',')",
            "name.where(family = 'F').given.first()",
        ];
        let mut walked = 0;
        for text in resources {
            let json = crate::json::parse(text).unwrap();
            let root = vec![Value::resource(&json, model)];
            for path in paths {
                let path = FhirPath::parse(path).unwrap();
                let (fast, general) = both(&path, &root[0], &root);
                if let Some(fast) = fast {
                    assert_eq!(fast, general, "{text}: {}", path.text());
                    walked += 1;
                }
                // The public entry point too (it builds a scope only for
                // paths with general functions).
                let public = path.evaluate_on(vec![root[0].clone()], &root, &HashMap::new());
                assert_eq!(format!("{public:?}"), general, "{text}: {}", path.text());
            }
        }
        assert!(walked >= 40, "{walked} compiled evaluations");
    }

    /// `(forEach path, column paths)` of each select of a view.
    type ViewPaths = Vec<(Option<String>, Vec<String>)>;

    fn view_paths(select: &serde_json::Value, out: &mut ViewPaths) {
        for s in select.as_array().into_iter().flatten() {
            let each = s
                .get("forEach")
                .or_else(|| s.get("forEachOrNull"))
                .and_then(|p| p.as_str())
                .map(String::from);
            let columns = s["column"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["path"].as_str().map(String::from))
                .collect();
            out.push((each, columns));
            view_paths(&s["select"], out);
        }
    }

    /// Every search parameter of every bundled resource type, and every
    /// shipped view column, gives the same result compiled and general on
    /// every resource of the bundled sample; and most of them compile.
    #[test]
    fn compiled_paths_agree_with_the_general_evaluator() {
        let model = FhirModel::r4().unwrap();
        let registry = SearchRegistry::r4().unwrap();
        let root_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut views: HashMap<String, ViewPaths> = HashMap::new();
        for entry in std::fs::read_dir(root_dir.join("sql/views")).unwrap() {
            let view: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
            let mut paths = Vec::new();
            view_paths(&view["select"], &mut paths);
            views
                .entry(view["resource"].as_str().unwrap().to_string())
                .or_default()
                .extend(paths);
        }
        let (mut compiled, mut total, mut checked) = (0, 0, 0);
        for entry in std::fs::read_dir(root_dir.join("data/synthea-10")).unwrap() {
            let file = entry.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".ndjson") {
                continue;
            }
            let resource_type = name.split('.').next().unwrap().to_string();
            let mut paths: Vec<(Option<FhirPath>, FhirPath)> = registry
                .supported(&resource_type)
                .into_iter()
                .filter_map(|p| p.path.clone())
                .map(|p| (None, p))
                .collect();
            for (each, columns) in views.get(&resource_type).into_iter().flatten() {
                let each = each.as_deref().map(|e| FhirPath::parse(e).unwrap());
                for c in columns {
                    paths.push((each.clone(), FhirPath::parse(c).unwrap()));
                }
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (i, line) in text.lines().take(200).enumerate() {
                let json = crate::json::parse(line).unwrap();
                let root = vec![Value::resource(&json, model)];
                for (each, path) in &paths {
                    let foci = match each {
                        Some(each) => each.evaluate(&json, &HashMap::new()).unwrap(),
                        None => root.clone(),
                    };
                    for focus in foci
                        .iter()
                        .filter(|f| matches!(f, Value::Node(n) if n.children_owner.is_some()))
                    {
                        let (fast, general) = both(path, focus, &root);
                        if i == 0 {
                            total += 1;
                            compiled += usize::from(fast.is_some());
                        }
                        if let Some(fast) = fast {
                            assert_eq!(fast, general, "{name}:{} {}", i + 1, path.text());
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked} comparisons");
        assert!(compiled * 10 >= total * 8, "only {compiled} of {total} paths compile");
    }
}
