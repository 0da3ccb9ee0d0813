/* The feature store's online read request, parsed in C when it has the usual shape.
 *
 * Why C: reading 100 entity keys out of a parsed GetOnlineFeaturesRequest costs about
 * 60 µs of Python (upb builds a map container, an entry and a Value per key), as much
 * as the rest of a read from memory. Here the request's wire bytes are walked once.
 *
 * Only the usual shape is taken: feature refs and/or a feature service, and entity
 * keys that all have exactly one join key, the same name, and an int64 value each (or
 * a string value each). Anything else -- request inputs, composite keys, other value
 * kinds, unknown or repeated singular fields, a field of an unexpected wire type,
 * malformed bytes, invalid UTF-8 -- returns None, and the caller parses the request
 * with protobuf and takes the general path, which also reports what is wrong with it.
 * So this parser never has to decide what is an error: it only recognises.
 *
 * Field numbers (features.proto, common.proto): GetOnlineFeaturesRequest feature_refs
 * = 1, feature_service = 2, entity_keys = 3, request_inputs = 4; EntityKey join_keys = 1
 * (a map: entry key = 1, value = 2); Value int64_value = 1, string_value = 3. The
 * tests compare this parser with protobuf's on generated and on malformed messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "protowire.h"

/* Value: exactly one of int64_value or string_value. kind 1 = int, 3 = string. */
static int
value(Reader r, int *kind, int64_t *number, Reader *text)
{
    uint32_t field;
    int wire;
    *kind = 0;
    while (r.p < r.end) {
        if (!tag(&r, &field, &wire) || *kind != 0) {
            return 0; /* a second member: protobuf keeps the last, we step aside */
        }
        if (field == 1 && wire == VARINT) {
            uint64_t u;
            if (!varint(&r, &u)) {
                return 0;
            }
            *number = (int64_t)u;
            *kind = 1;
        }
        else if (field == 3 && wire == LEN) {
            if (!sub(&r, text)) {
                return 0;
            }
            *kind = 3;
        }
        else {
            return 0;
        }
    }
    return *kind != 0;
}

/* EntityKey with one map entry: its key name and value. */
static int
entity_key(Reader r, Reader *name, int *kind, int64_t *number, Reader *text)
{
    uint32_t field;
    int wire;
    Reader entry;
    if (!tag(&r, &field, &wire) || field != 1 || wire != LEN || !sub(&r, &entry) ||
        r.p != r.end) {
        return 0; /* no entry, another field, or a second entry */
    }
    int have_name = 0, have_value = 0;
    while (entry.p < entry.end) {
        Reader body;
        if (!tag(&entry, &field, &wire) || wire != LEN || !sub(&entry, &body)) {
            return 0;
        }
        if (field == 1 && !have_name) {
            *name = body;
            have_name = 1;
        }
        else if (field == 2 && !have_value) {
            if (!value(body, kind, number, text)) {
                return 0;
            }
            have_value = 1;
        }
        else {
            return 0;
        }
    }
    return have_name && have_value && name->end > name->p;
}

/* Append ``item`` (a new reference, or NULL after a failed conversion) to ``list``:
 * 1 when appended, 0 when there was no item, -1 when the append failed. */
static int
append(PyObject *list, PyObject *item)
{
    if (item == NULL) {
        return 0;
    }
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed ? -1 : 1;
}

PyDoc_STRVAR(parse_online_request_doc,
"parse_online_request(data, /)\n--\n\n"
"(feature_refs, feature_service, join_key, values) of a GetOnlineFeaturesRequest in\n"
"the usual shape (see the top of _wire.c): values are every entity's int64 or every\n"
"entity's string, in request order. None for any other request.");

static PyObject *
parse_online_request(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    PyObject *refs = PyList_New(0);
    PyObject *values = PyList_New(0);
    PyObject *service = NULL, *name = NULL, *result = NULL;
    Reader first_name = {NULL, NULL};
    int first_kind = 0;
    if (refs == NULL || values == NULL) {
        goto done;
    }
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        Reader body;
        if (!tag(&r, &field, &wire) || wire != LEN || !sub(&r, &body)) {
            goto other;
        }
        if (field == 1) {
            int appended = append(refs, text_of(body));
            if (appended <= 0) {
                goto other; /* invalid UTF-8 (a MemoryError stays raised) */
            }
        }
        else if (field == 2 && service == NULL) {
            service = text_of(body);
            if (service == NULL) {
                goto other;
            }
        }
        else if (field == 3) {
            Reader key_name = {NULL, NULL}, text = {NULL, NULL};
            int kind = 0;
            int64_t number = 0;
            if (!entity_key(body, &key_name, &kind, &number, &text)) {
                goto other;
            }
            if (first_kind == 0) {
                first_kind = kind;
                first_name = key_name;
                name = text_of(key_name);
                if (name == NULL) {
                    goto other;
                }
            }
            else if (kind != first_kind || !same(key_name, first_name)) {
                goto other;
            }
            if (append(values, kind == 1 ? PyLong_FromLongLong(number) : text_of(text)) <= 0) {
                goto other;
            }
        }
        else {
            goto other; /* request inputs, a repeated feature_service, unknown fields */
        }
    }
    if (first_kind == 0) {
        goto other; /* no entity keys: the general path says what is missing */
    }
    if (service == NULL) {
        service = PyUnicode_FromStringAndSize("", 0);
        if (service == NULL) {
            goto done;
        }
    }
    result = PyTuple_Pack(4, refs, service, name, values);
    goto done;
other:
    result = not_usual();
done:
    PyBuffer_Release(&view);
    Py_XDECREF(refs);
    Py_XDECREF(values);
    Py_XDECREF(service);
    Py_XDECREF(name);
    return result;
}

static PyMethodDef methods[] = {
    {"parse_online_request", parse_online_request, METH_O, parse_online_request_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef wire_module = {
    PyModuleDef_HEAD_INIT,
    "mlbackend_features._wire",
    "The usual online read request, parsed without protobuf (see _wire.c).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__wire(void)
{
    return PyModule_Create(&wire_module);
}
