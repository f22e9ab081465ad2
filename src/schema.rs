//! JSON Schemas of the files kvbench writes, generated from the types that write them
//! (`schemars`), committed under `docs/schema/` and checked by `tests/fast/schema.rs`: a change to
//! the result or the comparison shows up as a change to its schema in review.
//!
//! The schemas describe what kvbench writes (serialization): every field it always writes is
//! `required`, and a field that may be `null` says so. Readers are more lenient than the schema
//! (a field an older file lacks takes its default).

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

/// The schema of `T` as kvbench writes it (JSON Schema 2020-12).
fn written<T: JsonSchema>() -> Value {
    let schema = SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    schema.to_value()
}

/// The run result (`kvbench run`, one file per arm run): docs/schema/result.schema.json.
pub fn result() -> Value {
    written::<crate::result::RunResult>()
}

/// The comparison (`kvbench compare`, `kvbench ab`): docs/schema/comparison.schema.json.
pub fn comparison() -> Value {
    written::<crate::compare::Comparison>()
}
