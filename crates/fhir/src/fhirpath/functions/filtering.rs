//! FHIRPath functions: `where`, `select`, `repeat`, `ofType`, and subsetting: `first`, `last`, `tail`, `skip`, `take`, `single`, `intersect`, `exclude`.

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // Filtering and projection
    f("where", 1, 1, |e, input, args, _| filter(e, input, &args[0])),
    f("select", 1, 1, |e, input, args, _| {
        let mut out = Vec::new();
        for (i, item) in input.into_iter().enumerate() {
            out.extend(e.eval(&args[0], &item_scope(item, i))?);
        }
        Ok(out)
    }),
    f("repeat", 1, 1, |e, input, args, _| {
        let mut out: Collection = Vec::new();
        let mut frontier = input;
        let mut rounds = 0;
        while !frontier.is_empty() && rounds < 1000 {
            let mut next = Vec::new();
            for (i, item) in frontier.into_iter().enumerate() {
                for child in e.eval(&args[0], &item_scope(item, i))? {
                    if !out.iter().any(|o| same_node(o, &child)) {
                        out.push(child.clone());
                        next.push(child);
                    }
                }
            }
            frontier = next;
            rounds += 1;
        }
        Ok(out)
    }),
    f("ofType", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        Ok(input.into_iter().filter(|v| e.is_type_exact(v, &spec)).collect())
    }),
    f("as", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        Ok(input.into_iter().filter(|v| e.is_type_exact(v, &spec)).collect())
    }),
    f("is", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        match singleton(&input, "is()")? {
            None => Ok(Vec::new()),
            Some(v) => Ok(boolean(e.is_type(v, &spec))),
        }
    }),
    // Subsetting
    f("single", 0, 0, |_, input, _, _| {
        if input.len() > 1 {
            return Err(eval_error(None, format!("single() on {} items", input.len())));
        }
        Ok(input)
    }),
    f("first", 0, 0, |_, input, _, _| Ok(input.into_iter().take(1).collect())),
    f("last", 0, 0, |_, mut input, _, _| Ok(input.pop().into_iter().collect())),
    f("tail", 0, 0, |_, input, _, _| Ok(input.into_iter().skip(1).collect())),
    f("skip", 1, 1, |e, input, args, scope| {
        let n = singleton_integer(&e.eval(&args[0], scope)?, "skip()")?.unwrap_or(0);
        Ok(input.into_iter().skip(n.max(0) as usize).collect())
    }),
    f("take", 1, 1, |e, input, args, scope| {
        let n = singleton_integer(&e.eval(&args[0], scope)?, "take()")?.unwrap_or(0);
        Ok(input.into_iter().take(n.max(0) as usize).collect())
    }),
    f("intersect", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(distinct(
            input
                .into_iter()
                .filter(|a| other.iter().any(|b| equals(a, b) == Some(true))),
        ))
    }),
    f("exclude", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(input
            .into_iter()
            .filter(|a| !other.iter().any(|b| equals(a, b) == Some(true)))
            .collect())
    }),
    f("union", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(distinct(input.into_iter().chain(other)))
    }),
    f("combine", 1, 1, |e, mut input, args, scope| {
        input.extend(e.eval(&args[0], scope)?);
        Ok(input)
    }),
];
