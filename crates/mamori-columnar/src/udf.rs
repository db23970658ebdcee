//! SQL functions for fields that have no column of their own.
//!
//! `json_get(raw, 'process.args')` reads a dotted path from the event's JSON (`raw`): a
//! string comes back as it is, anything else as JSON text; a missing path is NULL.
//! `SELECT json_get(raw, 'Event.EventData.ServiceName') FROM events WHERE event_code = '7045'`

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use serde_json::Value;

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonGet {
    signature: Signature,
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(x) = v.as_object().and_then(|o| o.get(path)) {
        return Some(x);
    }
    let mut cur = v;
    for part in path.split('.') {
        cur = match cur {
            Value::Object(o) => o.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

impl ScalarUDFImpl for JsonGet {
    fn name(&self) -> &str {
        "json_get"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        let [docs, paths] = arrays.as_slice() else {
            return exec_err!("json_get(json, 'dotted.path') takes two arguments");
        };
        let (Some(docs), Some(paths)) = (docs.as_string_opt::<i32>(), paths.as_string_opt::<i32>())
        else {
            return exec_err!("json_get(json, 'dotted.path') takes two strings");
        };
        let mut out = StringBuilder::new();
        for i in 0..docs.len() {
            if docs.is_null(i) || paths.is_null(i) {
                out.append_null();
                continue;
            }
            let found = serde_json::from_str::<Value>(docs.value(i))
                .ok()
                .and_then(|v| {
                    lookup(&v, paths.value(i)).and_then(|x| match x {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        other => Some(other.to_string()),
                    })
                });
            out.append_option(found);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// Registers the functions with a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(JsonGet {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable),
    }));
}
