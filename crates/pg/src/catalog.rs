//! What Postgres clients expect beyond the warehouse's tables: the
//! `pg_catalog` schema and functions (`\dt`, `\d`, SQLAlchemy's
//! `inspect()`, DBeaver's and Metabase's browsers read them), from
//! datafusion-pg-catalog, added to every session context.

use std::sync::Arc;

use datafusion::arrow::array::{Int32Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use fhirlake_engine::sql::SessionHook;
use pgwire::api::Type;

/// What `version()` answers: drivers parse a Postgres version out of it
/// (SQLAlchemy refuses to connect otherwise).
pub const VERSION: &str = concat!(
    "PostgreSQL 16.0 (fhirlake ",
    env!("CARGO_PKG_VERSION"),
    ", read-only SQL over a FHIR warehouse on Apache DataFusion)"
);

/// The hook adding `pg_catalog` and Postgres' `version()` to a session.
pub fn pg_catalog_hook() -> SessionHook {
    Arc::new(|ctx: &SessionContext| {
        let catalog = ctx.state().config().options().catalog.default_catalog.clone();
        setup_pg_catalog(ctx, &catalog, EmptyContextProvider).map_err(|e| *e)?;
        ctx.register_udf(version_function());
        ctx.register_udf(to_regtype_function());
        ctx.register_udf(crate::rewrite::like_escape_function());
        ctx.register_udf(json_build_object_function());
        // One namespace search path: every collation and type is visible.
        ctx.register_udf(true_function("pg_collation_is_visible"));
        ctx.register_udf(true_function("pg_type_is_visible"));
        // No table has sequences: every column's is NULL.
        ctx.register_udf(null_function(
            "pg_get_serial_sequence",
            vec![DataType::Utf8, DataType::Utf8],
        ));
        Ok(())
    })
}

fn version_function() -> ScalarUDF {
    create_udf(
        "version",
        Vec::new(),
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(VERSION.to_string()))))),
    )
}

/// Types `to_regtype` knows by name (what drivers look up at connect:
/// psycopg asks for `hstore`, which is not here, so it gets NULL).
const NAMED_TYPES: [Type; 16] = [
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::NUMERIC,
    Type::TEXT,
    Type::VARCHAR,
    Type::BYTEA,
    Type::DATE,
    Type::TIME,
    Type::TIMESTAMP,
    Type::TIMESTAMPTZ,
    Type::JSON,
    Type::UUID,
];

/// `to_regtype(name)`: the oid of a type name, NULL for types this server
/// does not have.
fn to_regtype_function() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::common::cast::as_string_array(&names[0])?;
            let oids: Int32Array = names
                .iter()
                .map(|name| {
                    let name = name?.trim().trim_start_matches("pg_catalog.");
                    let found = NAMED_TYPES.iter().find(|t| t.name().eq_ignore_ascii_case(name))?;
                    i32::try_from(found.oid()).ok()
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}

/// A function that answers NULL (text) for every row: what Postgres
/// answers for objects this server never has.
fn null_function(name: &str, arguments: Vec<DataType>) -> ScalarUDF {
    create_udf(
        name,
        arguments,
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    )
}

/// `json_build_object(key, value, …)`: a JSON object as text (SQLAlchemy's
/// column reflection builds identity and collation facts with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut objects = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?.to_string();
                let value = match pair.get(1) {
                    Some(array) => json_value(&ScalarValue::try_from_array(array, row)?),
                    None => serde_json::Value::Null,
                };
                object.insert(key, value);
            }
            objects.push(Some(serde_json::Value::Object(object).to_string()));
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(objects))))
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    if value.is_null() {
        return serde_json::Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(*b),
        v if v.data_type().is_numeric() => {
            serde_json::from_str(&v.to_string()).unwrap_or_else(|_| serde_json::Value::String(v.to_string()))
        }
        v => serde_json::Value::String(v.to_string()),
    }
}

fn json_build_object_function() -> ScalarUDF {
    ScalarUDF::new_from_impl(JsonBuildObject {
        signature: Signature::variadic_any(Volatility::Immutable),
    })
}

/// A one-argument (oid) function that answers true.
fn true_function(name: &str) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(|_: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))),
    )
}
