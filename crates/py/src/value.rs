//! Python objects ↔ msgpack values, the way py2p's u-msgpack-python maps
//! them: `bytes` ↔ bin, `str` ↔ str, `int` ↔ int (from -2**63 to
//! 2**64-1), `float` ↔ float64, `list`/`tuple` → array (back as `list`),
//! `dict` ↔ map, `None` ↔ nil, `bool` ↔ bool.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple};
use rs2p::Value;

/// Deepest nesting converted (deeper is refused, not recursed into: a
/// list that contains itself must not crash the interpreter).
const MAX_DEPTH: usize = 64;

fn unsupported(obj: &Bound<'_, PyAny>) -> PyErr {
    let kind = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!(
        "cannot send an object of type {kind}: packets are bool, int (-2**63 to 2**64-1), float, str, bytes, \
         list, tuple, dict or None"
    ))
}

/// A Python object as a msgpack value.
///
/// # Errors
/// `TypeError` for anything py2p cannot send either.
pub fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_value_at(obj, 0)
}

fn to_value_at(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyTypeError::new_err(format!("cannot send values nested deeper than {MAX_DEPTH}")));
    }
    if obj.is_none() {
        return Ok(Value::Nil);
    }
    // bool before int: a Python bool is an int.
    if obj.is_instance_of::<PyBool>() {
        return Ok(Value::Boolean(obj.extract::<bool>()?));
    }
    if obj.is_instance_of::<PyInt>() {
        if let Ok(i) = obj.extract::<i64>() {
            return Ok(Value::from(i));
        }
        if let Ok(u) = obj.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Err(PyTypeError::new_err("cannot send an int outside -2**63 .. 2**64-1"));
    }
    if obj.is_instance_of::<PyFloat>() {
        return Ok(Value::F64(obj.extract::<f64>()?));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::from(s.to_cow()?.as_ref()));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::Binary(b.as_bytes().to_vec()));
    }
    if obj.is_instance_of::<PyByteArray>() || obj.is_instance_of::<PyMemoryView>() {
        return Ok(Value::Binary(obj.extract::<Vec<u8>>()?));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|x| to_value_at(&x, depth + 1)).collect::<PyResult<_>>().map(Value::Array);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|x| to_value_at(&x, depth + 1)).collect::<PyResult<_>>().map(Value::Array);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            pairs.push((to_value_at(&k, depth + 1)?, to_value_at(&v, depth + 1)?));
        }
        return Ok(Value::Map(pairs));
    }
    Err(unsupported(obj))
}

/// Several Python objects (a message's packets).
pub fn to_values(objs: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    objs.try_iter()?.map(|o| to_value(&o?)).collect()
}

/// A msgpack value as a Python object.
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Nil => py.None().into_bound(py),
        Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(x), _) => x.into_pyobject(py)?.into_any(),
            (None, Some(x)) => x.into_pyobject(py)?.into_any(),
            (None, None) => py.None().into_bound(py),
        },
        Value::F32(f) => PyFloat::new(py, f64::from(*f)).into_any(),
        Value::F64(f) => PyFloat::new(py, *f).into_any(),
        // A str that is not UTF-8 (py2p never sends one) comes back as bytes.
        Value::String(s) => match s.as_str() {
            Some(text) => PyString::new(py, text).into_any(),
            None => PyBytes::new(py, s.as_bytes()).into_any(),
        },
        Value::Binary(b) => PyBytes::new(py, b).into_any(),
        Value::Array(a) => PyList::new(py, a.iter().map(|x| to_py(py, x)).collect::<PyResult<Vec<_>>>()?)?.into_any(),
        Value::Map(m) => {
            let d = PyDict::new(py);
            for (k, v) in m {
                d.set_item(hashable(py, k)?, to_py(py, v)?)?;
            }
            d.into_any()
        }
        Value::Ext(code, data) => {
            PyTuple::new(py, [code.into_pyobject(py)?.into_any(), PyBytes::new(py, data).into_any()])?.into_any()
        }
    })
}

/// A map key: arrays become tuples (a list cannot be a dict key).
fn hashable<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    match v {
        Value::Array(a) => {
            Ok(PyTuple::new(py, a.iter().map(|x| hashable(py, x)).collect::<PyResult<Vec<_>>>()?)?.into_any())
        }
        other => to_py(py, other),
    }
}
