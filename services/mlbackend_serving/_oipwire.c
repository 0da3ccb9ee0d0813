/* A ModelInfer request (Open Inference Protocol v2) in its usual shape, parsed in C.
 *
 * Why C: protobuf builds a message, a tensor, a shape container and the contents
 * container for every request, and the transport then reads each of them back field by
 * field: about 6 µs of a single-row prediction whose model needs 4, on a thread that
 * holds the GIL the whole time. Here the request's bytes are walked once.
 *
 * Only the usual shape is taken: a model name, optional version and id, one input
 * tensor of datatype FP32 or FP64 with a shape of 1 to 8 dimensions, none negative,
 * whose values are either packed in ``contents`` (fp32_contents or fp64_contents) or
 * in the one ``raw_input_contents`` entry, exactly as many as the shape holds; any
 * number of requested outputs by name. Anything else -- parameters, several inputs,
 * other datatypes, unpacked values, both or neither value sources, a count that does
 * not match the shape, unknown or repeated singular fields, a field of an unexpected
 * wire type, malformed bytes, invalid UTF-8 -- returns None, and the caller parses
 * the request with protobuf and takes the general path, which reports what is wrong.
 * What the values mean (shape against the signature, NaN, infinities) is not decided
 * here: the caller checks the tensor as it checks every other one.
 *
 * Field numbers (grpc_predict_v2.proto): ModelInferRequest model_name = 1,
 * model_version = 2, id = 3, parameters = 4, inputs = 5, outputs = 6,
 * raw_input_contents = 7; InferInputTensor name = 1, datatype = 2, shape = 3,
 * parameters = 4, contents = 5; InferRequestedOutputTensor name = 1, parameters = 2;
 * InferTensorContents fp32_contents = 6, fp64_contents = 7. The tests compare this
 * parser with protobuf's on generated and on malformed messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "protowire.h"

#define MAX_DIMS 8

typedef struct {
    Reader name, datatype, values;
    int64_t shape[MAX_DIMS];
    int dims;
    int has_name, has_datatype, has_shape, has_contents;
} Input;

/* The packed shape: 1 to MAX_DIMS dimensions, none negative. */
static int
shape_of(Reader r, Input *in)
{
    in->dims = 0;
    while (r.p < r.end) {
        uint64_t d;
        if (!varint(&r, &d) || in->dims == MAX_DIMS || (int64_t)d < 0) {
            return 0;
        }
        in->shape[in->dims++] = (int64_t)d;
    }
    return in->dims > 0;
}

/* InferTensorContents holding only ``field`` (packed), once. */
static int
contents_of(Reader r, uint32_t expected, Reader *values)
{
    uint32_t field;
    int wire;
    if (!tag(&r, &field, &wire) || field != expected || wire != LEN || !sub(&r, values)) {
        return 0;
    }
    return r.p == r.end;
}

static int
input_of(Reader r, Input *in)
{
    memset(in, 0, sizeof(*in));
    Reader contents = {NULL, NULL};
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        Reader body;
        if (!tag(&r, &field, &wire) || wire != LEN || !sub(&r, &body)) {
            return 0;
        }
        if (field == 1 && !in->has_name) {
            in->name = body;
            in->has_name = 1;
        }
        else if (field == 2 && !in->has_datatype) {
            in->datatype = body;
            in->has_datatype = 1;
        }
        else if (field == 3 && !in->has_shape) {
            if (!shape_of(body, in)) {
                return 0;
            }
            in->has_shape = 1;
        }
        else if (field == 5 && !in->has_contents) {
            contents = body;
            in->has_contents = 1;
        }
        else {
            return 0; /* parameters, a repeated field, an unknown one */
        }
    }
    if (!in->has_datatype || !in->has_shape) {
        return 0;
    }
    if (in->has_contents) {
        uint32_t expected = (in->datatype.end - in->datatype.p == 4 &&
                             memcmp(in->datatype.p, "FP32", 4) == 0) ? 6 : 7;
        return contents_of(contents, expected, &in->values);
    }
    return 1;
}

/* InferRequestedOutputTensor with a name and nothing else. */
static int
output_name(Reader r, Reader *name)
{
    uint32_t field;
    int wire;
    if (!tag(&r, &field, &wire) || field != 1 || wire != LEN || !sub(&r, name)) {
        return 0;
    }
    return r.p == r.end;
}

static int
is(Reader r, const char *text)
{
    size_t n = strlen(text);
    return (size_t)(r.end - r.p) == n && memcmp(r.p, text, n) == 0;
}

PyDoc_STRVAR(parse_infer_request_doc,
"parse_infer_request(data, /)\n--\n\n"
"(model_name, model_version, id, input_name, datatype, shape, values, raw, outputs)\n"
"of a ModelInferRequest in the usual shape (see the top of _oipwire.c): values are\n"
"the input's little-endian bytes, raw whether they came in raw_input_contents,\n"
"outputs the requested output names. None for any other request.");

static PyObject *
parse_infer_request(PyObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0) {
        return NULL;
    }
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    Reader name = {NULL, NULL}, version = {NULL, NULL}, id = {NULL, NULL};
    Reader tensor = {NULL, NULL}, raw = {NULL, NULL};
    int has_name = 0, has_version = 0, has_id = 0, has_tensor = 0, has_raw = 0;
    PyObject *outputs = PyList_New(0);
    PyObject *items[9] = {NULL};
    PyObject *result = NULL;
    Input in;
    if (outputs == NULL) {
        goto done;
    }
    while (r.p < r.end) {
        uint32_t field;
        int wire;
        Reader body;
        if (!tag(&r, &field, &wire) || wire != LEN || !sub(&r, &body)) {
            goto other;
        }
        if (field == 1 && !has_name) {
            name = body;
            has_name = 1;
        }
        else if (field == 2 && !has_version) {
            version = body;
            has_version = 1;
        }
        else if (field == 3 && !has_id) {
            id = body;
            has_id = 1;
        }
        else if (field == 5 && !has_tensor) {
            tensor = body;
            has_tensor = 1;
        }
        else if (field == 6) {
            Reader output;
            if (!output_name(body, &output)) {
                goto other;
            }
            PyObject *text = text_of(output);
            if (text == NULL) {
                goto other;
            }
            int failed = PyList_Append(outputs, text);
            Py_DECREF(text);
            if (failed) {
                goto done;
            }
        }
        else if (field == 7 && !has_raw) {
            raw = body;
            has_raw = 1;
        }
        else {
            goto other; /* parameters, a second input, a repeated field, an unknown one */
        }
    }
    if (!has_name || name.p == name.end || !has_tensor || !input_of(tensor, &in)) {
        goto other;
    }
    Py_ssize_t itemsize;
    if (is(in.datatype, "FP32")) {
        itemsize = 4;
    }
    else if (is(in.datatype, "FP64")) {
        itemsize = 8;
    }
    else {
        goto other;
    }
    if (has_raw == in.has_contents) {
        goto other; /* both sources, or neither */
    }
    Reader values = has_raw ? raw : in.values;
    Py_ssize_t size = values.end - values.p;
    uint64_t elements = 1;
    for (int d = 0; d < in.dims; d++) {
        if (in.shape[d] != 0 && elements > (uint64_t)PY_SSIZE_T_MAX / (uint64_t)in.shape[d]) {
            goto other;
        }
        elements *= (uint64_t)in.shape[d];
    }
    if (size % itemsize != 0 || (uint64_t)(size / itemsize) != elements) {
        goto other;
    }
    PyObject *shape = PyTuple_New(in.dims);
    items[5] = shape;
    if (shape == NULL) {
        goto done;
    }
    for (int d = 0; d < in.dims; d++) {
        PyObject *n = PyLong_FromLongLong(in.shape[d]);
        if (n == NULL) {
            goto done;
        }
        PyTuple_SET_ITEM(shape, d, n);
    }
    Reader empty = {(const uint8_t *)"", (const uint8_t *)""};
    items[0] = text_of(name);
    items[1] = text_of(has_version ? version : empty);
    items[2] = text_of(has_id ? id : empty);
    items[3] = text_of(in.has_name ? in.name : empty);
    items[4] = text_of(in.datatype);
    for (int k = 0; k < 5; k++) {
        if (items[k] == NULL) {
            goto other;
        }
    }
    items[6] = PyBytes_FromStringAndSize((const char *)values.p, size);
    if (items[6] == NULL) {
        goto done;
    }
    items[7] = Py_NewRef(has_raw ? Py_True : Py_False);
    items[8] = PyList_AsTuple(outputs);
    if (items[8] == NULL) {
        goto done;
    }
    result = PyTuple_New(9);
    if (result != NULL) {
        for (int k = 0; k < 9; k++) {
            PyTuple_SET_ITEM(result, k, items[k]);
            items[k] = NULL;
        }
    }
    goto done;
other:
    result = not_usual();
done:
    PyBuffer_Release(&view);
    Py_XDECREF(outputs);
    for (int k = 0; k < 9; k++) {
        Py_XDECREF(items[k]);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"parse_infer_request", parse_infer_request, METH_O, parse_infer_request_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef oipwire_module = {
    PyModuleDef_HEAD_INIT,
    "mlbackend_serving._oipwire",
    "The usual ModelInfer request, parsed without protobuf (see _oipwire.c).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__oipwire(void)
{
    return PyModule_Create(&oipwire_module);
}
