//! The FHIRPath subset FHIRPath Patch paths may use here: the resource
//! type, then any sequence of `.element`, `[index]`,
//! `.where(a.b = 'literal')` (a string, number or boolean literal; `!=`
//! too), `.first()` and `.last()`. For example
//! `Group.member.where(entity.reference = 'Patient/123')`. A path outside
//! the subset is refused with the position it stops at.

use serde_json::Value;

use super::PatchError;

/// One step of a located element inside a resource's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Key(String),
    /// An array item.
    Index(usize),
}

/// Where an element is: the steps from the resource root.
pub type Location = Vec<Step>;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Name(String),
    Index(usize),
    Where {
        path: Vec<String>,
        equal: bool,
        value: Value,
    },
    First,
    Last,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    root: String,
    segments: Vec<Segment>,
}

impl PatchPath {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, PatchError> {
        let mut parser = Parser { text, at: 0 };
        let root = parser.identifier()?;
        let mut segments = Vec::new();
        while !parser.done() {
            segments.push(parser.segment()?);
        }
        Ok(Self { root, segments })
    }

    /// The path without its last segment, and that segment's element name
    /// when it is one (`Group.member` → (`Group`, `member`)).
    pub fn split_last_name(&self) -> Option<(PatchPath, &str)> {
        match self.segments.last() {
            Some(Segment::Name(name)) => Some((
                PatchPath {
                    root: self.root.clone(),
                    segments: self.segments[..self.segments.len() - 1].to_vec(),
                },
                name.as_str(),
            )),
            _ => None,
        }
    }

    /// The elements of `resource` the path selects, in document order.
    pub fn locate(&self, resource: &Value) -> Result<Vec<Location>, PatchError> {
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if self.root != resource_type {
            return Err(PatchError::Invalid(format!(
                "a path must start with the resource type '{resource_type}', not '{}'",
                self.root
            )));
        }
        let mut current: Vec<(Location, &Value)> = vec![(Vec::new(), resource)];
        for segment in &self.segments {
            current = match segment {
                Segment::Name(name) => children(&current, name),
                Segment::Index(i) => current.into_iter().nth(*i).into_iter().collect(),
                Segment::First => current.into_iter().take(1).collect(),
                Segment::Last => current.into_iter().last().into_iter().collect(),
                Segment::Where { path, equal, value } => current
                    .into_iter()
                    .filter(|(_, item)| {
                        let mut found = vec![(Vec::new(), *item)];
                        for name in path {
                            found = children(&found, name);
                        }
                        found.iter().any(|(_, v)| *v == value) == *equal
                    })
                    .collect(),
            };
        }
        Ok(current.into_iter().map(|(location, _)| location).collect())
    }
}

/// The children named `name` of every item (arrays flattened).
fn children<'a>(items: &[(Location, &'a Value)], name: &str) -> Vec<(Location, &'a Value)> {
    let mut out = Vec::new();
    for (location, item) in items {
        let Some(child) = item.get(name) else { continue };
        let mut here = location.clone();
        here.push(Step::Key(name.to_string()));
        match child {
            Value::Array(list) => {
                for (i, element) in list.iter().enumerate() {
                    let mut at = here.clone();
                    at.push(Step::Index(i));
                    out.push((at, element));
                }
            }
            other => out.push((here, other)),
        }
    }
    out
}

/// The element at `location`, for changing it.
pub fn get_mut<'a>(resource: &'a mut Value, location: &[Step]) -> Option<&'a mut Value> {
    let mut current = resource;
    for step in location {
        current = match step {
            Step::Key(key) => current.get_mut(key.as_str())?,
            Step::Index(i) => current.get_mut(*i)?,
        };
    }
    Some(current)
}

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.rest().trim().is_empty()
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn error(&self, expected: &str) -> PatchError {
        PatchError::Invalid(format!(
            "path '{}': expected {expected} at position {} (supported: Type.element, [n], \
             .where(a.b = 'value'), .first(), .last())",
            self.text, self.at
        ))
    }

    fn skip_spaces(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn identifier(&mut self) -> Result<String, PatchError> {
        self.skip_spaces();
        let length = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if length == 0 || self.rest().starts_with(|c: char| c.is_ascii_digit()) {
            return Err(self.error("an element name"));
        }
        let name = self.rest()[..length].to_string();
        self.at += length;
        Ok(name)
    }

    fn segment(&mut self) -> Result<Segment, PatchError> {
        if self.eat("[") {
            let digits: String = self.rest().chars().take_while(char::is_ascii_digit).collect();
            self.at += digits.len();
            let index = digits.parse().map_err(|_| self.error("an index"))?;
            return if self.eat("]") {
                Ok(Segment::Index(index))
            } else {
                Err(self.error("']'"))
            };
        }
        if !self.eat(".") {
            return Err(self.error("'.' or '['"));
        }
        let name = self.identifier()?;
        if !self.eat("(") {
            return Ok(Segment::Name(name));
        }
        let segment = match name.as_str() {
            "first" => Segment::First,
            "last" => Segment::Last,
            "where" => self.condition()?,
            _ => return Err(self.error("first(), last() or where(…)")),
        };
        if self.eat(")") {
            Ok(segment)
        } else {
            Err(self.error("')'"))
        }
    }

    fn condition(&mut self) -> Result<Segment, PatchError> {
        let mut path = vec![self.identifier()?];
        while self.eat(".") {
            path.push(self.identifier()?);
        }
        let equal = if self.eat("!=") {
            false
        } else if self.eat("=") {
            true
        } else {
            return Err(self.error("'=' or '!='"));
        };
        let value = self.literal()?;
        Ok(Segment::Where { path, equal, value })
    }

    fn literal(&mut self) -> Result<Value, PatchError> {
        self.skip_spaces();
        if self.eat("'") {
            let mut text = String::new();
            let mut chars = self.rest().char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => text.push(escaped),
                        None => break,
                    },
                    '\'' => {
                        self.at += i + 1;
                        return Ok(Value::String(text));
                    }
                    other => text.push(other),
                }
            }
            return Err(self.error("a closing quote"));
        }
        for (word, value) in [("true", Value::Bool(true)), ("false", Value::Bool(false))] {
            if self.eat(word) {
                return Ok(value);
            }
        }
        let number: String = self
            .rest()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
            .collect();
        self.at += number.len();
        serde_json::from_str::<serde_json::Number>(&number)
            .map(Value::Number)
            .map_err(|_| self.error("a literal ('text', a number, true or false)"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_select_elements_by_name_index_and_condition() {
        let group = json!({"resourceType": "Group", "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": true},
        ]});
        let locate = |text: &str| PatchPath::parse(text).expect(text).locate(&group).expect(text);
        assert_eq!(locate("Group.member").len(), 2);
        let b = locate("Group.member.where(entity.reference = 'Patient/b')");
        assert_eq!(b, vec![vec![Step::Key("member".into()), Step::Index(1)]]);
        assert_eq!(locate("Group.member.where(inactive=true)"), b);
        assert_eq!(locate("Group.member.where(entity.reference != 'Patient/b')").len(), 1);
        assert_eq!(locate("Group.member[1]"), b);
        assert_eq!(locate("Group.member.last()"), b);
        assert_eq!(locate("Group.member.first().entity.reference").len(), 1);
        assert!(locate("Group.name").is_empty());
        for bad in [
            "Group.member.exists()",
            "Group..x",
            "Group.member[x]",
            "Group.member.where(a = )",
        ] {
            assert!(PatchPath::parse(bad).is_err(), "{bad}");
        }
        let wrong_root = PatchPath::parse("Patient.name").expect("parses").locate(&group);
        assert!(wrong_root.is_err());
    }
}
