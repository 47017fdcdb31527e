//! FHIRPath functions: `empty`, `exists`, `all`, `allTrue`, …, `count`, `distinct`, `isDistinct`, `subsetOf`, `supersetOf`.

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // Existence
    f("empty", 0, 0, |_, input, _, _| Ok(boolean(input.is_empty()))),
    f("exists", 0, 1, |e, input, args, _| {
        let input = match args.first() {
            Some(crit) => filter(e, input, crit)?,
            None => input,
        };
        Ok(boolean(!input.is_empty()))
    }),
    f("all", 1, 1, |e, input, args, _| {
        for (i, item) in input.into_iter().enumerate() {
            if to_boolean(&e.eval(&args[0], &item_scope(item, i))?)? != Some(true) {
                return Ok(boolean(false));
            }
        }
        Ok(boolean(true))
    }),
    f("allTrue", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().all(|b| *b)))
    }),
    f("anyTrue", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().any(|b| *b)))
    }),
    f("allFalse", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().all(|b| !*b)))
    }),
    f("anyFalse", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().any(|b| !*b)))
    }),
    f("subsetOf", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(boolean(
            input.iter().all(|a| other.iter().any(|b| equals(a, b) == Some(true))),
        ))
    }),
    f("supersetOf", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(boolean(
            other.iter().all(|b| input.iter().any(|a| equals(a, b) == Some(true))),
        ))
    }),
    f("count", 0, 0, |_, input, _, _| {
        Ok(vec![Value::Integer(input.len() as i64)])
    }),
    f("distinct", 0, 0, |_, input, _, _| Ok(distinct(input))),
    f("isDistinct", 0, 0, |_, input, _, _| {
        let n = input.len();
        Ok(boolean(distinct(input).len() == n))
    }),
];
