//! Rows of one index table (one kind, one resource type) buffered as Arrow
//! builders, sorted when they are written out as a run.

use std::sync::Arc;

use datafusion::arrow::array::UInt32Array;
use datafusion::arrow::array::{ArrayRef, Float64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::row::{RowConverter, SortField};

use super::{IndexKind, OPEN_HIGH, OPEN_LOW};
use crate::search::extract::{IndexValue, fold};

enum ValueBuilders {
    Token {
        code: StringBuilder,
        system: StringBuilder,
        text: StringBuilder,
        type_system: StringBuilder,
        type_code: StringBuilder,
    },
    Date {
        low: TimestampMicrosecondBuilder,
        high: TimestampMicrosecondBuilder,
    },
    String {
        folded: StringBuilder,
        exact: StringBuilder,
    },
    Reference {
        target_id: StringBuilder,
        target_type: StringBuilder,
    },
    Quantity {
        value: Float64Builder,
        system: StringBuilder,
        code: StringBuilder,
        unit: StringBuilder,
    },
    Number {
        value: Float64Builder,
    },
    Uri {
        uri: StringBuilder,
    },
}

/// Buffered rows of one index table.
pub struct IndexBuffer {
    kind: IndexKind,
    resource_type: &'static str,
    /// The distinct parameters appended (few per table), and each row's
    /// index into them (the `param` column is built from them): rows are
    /// sorted by parameter with a counting pass, so the comparison sort
    /// only compares values within a parameter.
    params: Vec<&'static str>,
    param_ids: Vec<u16>,
    values: ValueBuilders,
    resource_id: StringBuilder,
    patient: StringBuilder,
    rows: usize,
    bytes: usize,
}

fn decimal_to_f64(value: &rust_decimal::Decimal) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    value.to_f64().unwrap_or(f64::NAN)
}

impl IndexBuffer {
    /// An empty buffer for `kind` rows of `resource_type`.
    pub fn new(kind: IndexKind, resource_type: &'static str) -> Self {
        let values = match kind {
            IndexKind::Token => ValueBuilders::Token {
                code: StringBuilder::new(),
                system: StringBuilder::new(),
                text: StringBuilder::new(),
                type_system: StringBuilder::new(),
                type_code: StringBuilder::new(),
            },
            IndexKind::Date => ValueBuilders::Date {
                low: TimestampMicrosecondBuilder::new(),
                high: TimestampMicrosecondBuilder::new(),
            },
            IndexKind::String => ValueBuilders::String {
                folded: StringBuilder::new(),
                exact: StringBuilder::new(),
            },
            IndexKind::Reference => ValueBuilders::Reference {
                target_id: StringBuilder::new(),
                target_type: StringBuilder::new(),
            },
            IndexKind::Quantity => ValueBuilders::Quantity {
                value: Float64Builder::new(),
                system: StringBuilder::new(),
                code: StringBuilder::new(),
                unit: StringBuilder::new(),
            },
            IndexKind::Number => ValueBuilders::Number {
                value: Float64Builder::new(),
            },
            IndexKind::Uri => ValueBuilders::Uri {
                uri: StringBuilder::new(),
            },
        };
        Self {
            kind,
            resource_type,
            params: Vec::new(),
            param_ids: Vec::new(),
            values,
            resource_id: StringBuilder::new(),
            patient: StringBuilder::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate memory held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends one row per patient (one row with a null patient when there is
    /// none). `value` must be of this buffer's kind; others are ignored.
    pub fn append(&mut self, param: &'static str, value: &IndexValue, resource_id: &str, patients: &[String]) {
        let copies = patients.len().max(1);
        let param_id = self.param_id(param);
        for i in 0..copies {
            if !self.append_value(value) {
                return;
            }
            self.param_ids.push(param_id);
            self.resource_id.append_value(resource_id);
            self.patient.append_option(patients.get(i));
            self.rows += 1;
            self.bytes += 24 + size_of::<u16>() + resource_id.len() + patients.get(i).map_or(0, String::len);
        }
    }

    /// The index of `param` in `self.params` (added if new). Parameter codes
    /// come from the registry, so most look-ups match by address.
    fn param_id(&mut self, param: &'static str) -> u16 {
        let found = self
            .params
            .iter()
            .position(|p| std::ptr::eq(*p, param))
            .or_else(|| self.params.iter().position(|p| *p == param));
        let id = found.unwrap_or_else(|| {
            self.params.push(param);
            self.params.len() - 1
        });
        // A type has a few dozen parameters at most.
        u16::try_from(id).unwrap_or(u16::MAX)
    }

    fn append_value(&mut self, value: &IndexValue) -> bool {
        let opt_len = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        match (&mut self.values, value) {
            (
                ValueBuilders::Token {
                    code: c,
                    system: s,
                    text: t,
                    type_system,
                    type_code,
                },
                IndexValue::Token {
                    system,
                    code,
                    text,
                    of_type,
                },
            ) => {
                c.append_value(code);
                s.append_option(system.as_deref());
                let folded = text.as_deref().map(fold);
                self.bytes += code.len() + opt_len(system) + opt_len(&folded);
                t.append_option(folded);
                match of_type {
                    Some((system, code)) => {
                        type_system.append_option(system.as_deref());
                        type_code.append_value(code);
                        self.bytes += opt_len(system) + code.len();
                    }
                    None => {
                        type_system.append_null();
                        type_code.append_null();
                    }
                }
            }
            (ValueBuilders::Date { low, high }, IndexValue::Date(range)) => {
                low.append_value(range.low.max(OPEN_LOW));
                high.append_value(range.high.min(OPEN_HIGH));
                self.bytes += 16;
            }
            (ValueBuilders::String { folded: f, exact: e }, IndexValue::String { folded, exact }) => {
                f.append_value(folded);
                e.append_value(exact);
                self.bytes += folded.len() + exact.len();
            }
            (ValueBuilders::Reference { target_id, target_type }, IndexValue::Reference { resource_type, id }) => {
                target_id.append_value(id);
                target_type.append_option(resource_type.as_deref());
                self.bytes += id.len() + opt_len(resource_type);
            }
            (
                ValueBuilders::Quantity {
                    value: v,
                    system: s,
                    code: c,
                    unit: u,
                },
                IndexValue::Quantity {
                    value,
                    system,
                    code,
                    unit,
                },
            ) => {
                v.append_value(decimal_to_f64(value));
                s.append_option(system.as_deref());
                c.append_option(code.as_deref());
                u.append_option(unit.as_deref());
                self.bytes += 8 + opt_len(system) + opt_len(code) + opt_len(unit);
            }
            (ValueBuilders::Number { value: v }, IndexValue::Number(value)) => {
                v.append_value(decimal_to_f64(value));
                self.bytes += 8;
            }
            (ValueBuilders::Uri { uri }, IndexValue::Uri(value)) => {
                uri.append_value(value);
                self.bytes += value.len();
            }
            _ => return false,
        }
        true
    }

    /// Takes the buffered rows as one batch sorted by `(param, first value
    /// column)`, leaving the buffer empty.
    pub fn take_sorted(&mut self) -> Result<RecordBatch, ArrowError> {
        let rows = self.rows;
        self.rows = 0;
        self.bytes = 0;
        let mut type_column = StringBuilder::with_capacity(rows, rows * self.resource_type.len());
        for _ in 0..rows {
            type_column.append_value(self.resource_type);
        }
        let mut param_column = StringBuilder::with_capacity(rows, rows * 8);
        for &id in &self.param_ids {
            param_column.append_value(self.params[usize::from(id)]);
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(type_column.finish()), Arc::new(param_column.finish())];
        match &mut self.values {
            ValueBuilders::Token {
                code,
                system,
                text,
                type_system,
                type_code,
            } => {
                arrays.extend(
                    [
                        code.finish(),
                        system.finish(),
                        text.finish(),
                        type_system.finish(),
                        type_code.finish(),
                    ]
                    .map(|a| Arc::new(a) as ArrayRef),
                );
            }
            ValueBuilders::Date { low, high } => {
                arrays.push(Arc::new(low.finish().with_timezone("UTC")));
                arrays.push(Arc::new(high.finish().with_timezone("UTC")));
            }
            ValueBuilders::String { folded, exact } => {
                arrays.extend([folded.finish(), exact.finish()].map(|a| Arc::new(a) as ArrayRef));
            }
            ValueBuilders::Reference { target_id, target_type } => {
                arrays.extend([target_id.finish(), target_type.finish()].map(|a| Arc::new(a) as ArrayRef));
            }
            ValueBuilders::Quantity {
                value,
                system,
                code,
                unit,
            } => {
                arrays.push(Arc::new(value.finish()));
                arrays.extend([system.finish(), code.finish(), unit.finish()].map(|a| Arc::new(a) as ArrayRef));
            }
            ValueBuilders::Number { value } => arrays.push(Arc::new(value.finish())),
            ValueBuilders::Uri { uri } => arrays.push(Arc::new(uri.finish())),
        }
        arrays.push(Arc::new(self.resource_id.finish()));
        arrays.push(Arc::new(self.patient.finish()));
        let batch = RecordBatch::try_new(self.kind.schema(), arrays)?;
        // Sort key: param, then the first value column. Rows are grouped by
        // parameter in name order with a counting pass (a table has few
        // parameters), then each group is sorted by its value in Arrow's
        // row format (plain byte comparisons, much faster than a
        // column-wise sort over strings). Same order as sorting by both.
        let param_ids = std::mem::take(&mut self.param_ids);
        let mut by_name: Vec<usize> = (0..self.params.len()).collect();
        by_name.sort_unstable_by_key(|&i| self.params[i]);
        let mut rank = vec![0usize; self.params.len()];
        for (r, &i) in by_name.iter().enumerate() {
            rank[i] = r;
        }
        let mut starts = vec![0usize; self.params.len() + 1];
        for &id in &param_ids {
            starts[rank[usize::from(id)] + 1] += 1;
        }
        for r in 1..starts.len() {
            starts[r] += starts[r - 1];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; batch.num_rows()];
        for (row, &id) in param_ids.iter().enumerate() {
            let slot = &mut next[rank[usize::from(id)]];
            order[*slot] = row as u32;
            *slot += 1;
        }
        let values = batch.column(2).clone();
        let converter = RowConverter::new(vec![SortField::new(values.data_type().clone())])?;
        let keys = converter.convert_columns(&[values])?;
        for group in starts.windows(2) {
            order[group[0]..group[1]].sort_unstable_by(|&a, &b| keys.row(a as usize).cmp(&keys.row(b as usize)));
        }
        take_record_batch(&batch, &UInt32Array::from(order))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};

    #[test]
    fn sorts_by_param_then_value_and_repeats_rows_per_patient() {
        let mut buffer = IndexBuffer::new(IndexKind::Token, "Condition");
        let token = |code: &str| IndexValue::Token {
            system: Some("http://snomed.info/sct".into()),
            code: code.into(),
            text: Some("Diabète".into()),
            of_type: None,
        };
        buffer.append("code", &token("b"), "c1", &["p1".into(), "p2".into()]);
        buffer.append("code", &token("a"), "c2", &[]);
        buffer.append("_id", &token("z"), "c3", &["p3".into()]);
        // A value of another kind is ignored.
        buffer.append("onset-date", &IndexValue::Number(1.into()), "c4", &[]);
        assert_eq!(buffer.rows(), 4);
        let batch = buffer.take_sorted().unwrap();
        let column = |name: &str| {
            let array = batch.column_by_name(name).unwrap().as_string::<i32>();
            (0..array.len())
                .map(|i| array.is_valid(i).then(|| array.value(i).to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            column("code"),
            [Some("z"), Some("a"), Some("b"), Some("b")].map(|s| s.map(String::from))
        );
        assert_eq!(column("patient")[1], None, "no compartment: a null patient");
        assert_eq!(
            column("text")[0].as_deref(),
            Some("diabete"),
            "display is folded for :text"
        );
        assert_eq!(buffer.rows(), 0);
    }
}
