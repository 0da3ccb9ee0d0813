/* Reading protobuf's wire format: what the parsers of our C extensions share
 * (mlbackend_features/_wire.c, mlbackend_serving/_oipwire.c).
 *
 * Each parser only recognises the usual shape of one request message and returns None
 * for anything else, so the caller parses it with protobuf and reports what is wrong.
 * These helpers therefore answer 0 at anything malformed and never raise.
 */
#ifndef MLBACKEND_PROTOWIRE_H
#define MLBACKEND_PROTOWIRE_H

#include <stdint.h>
#include <string.h>

enum { VARINT = 0, I64 = 1, LEN = 2, I32 = 5 };

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} Reader;

/* One varint; 0 when it is truncated or longer than ten bytes. */
static inline int
varint(Reader *r, uint64_t *out)
{
    uint64_t value = 0;
    for (int shift = 0; shift < 70 && r->p < r->end; shift += 7) {
        uint8_t byte = *r->p++;
        if (shift == 63 && byte > 1) {
            return 0; /* the tenth byte may only hold the top bit */
        }
        value |= (uint64_t)(byte & 0x7F) << shift;
        if (!(byte & 0x80)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* A field's tag; 0 at a malformed one (field number 0 included). */
static inline int
tag(Reader *r, uint32_t *field, int *wire)
{
    uint64_t t;
    if (!varint(r, &t) || (t >> 3) == 0 || (t >> 3) > 0x1FFFFFFF) {
        return 0;
    }
    *field = (uint32_t)(t >> 3);
    *wire = (int)(t & 7);
    return 1;
}

/* A length-delimited field's contents as a reader of their own. */
static inline int
sub(Reader *r, Reader *out)
{
    uint64_t n;
    if (!varint(r, &n) || n > (uint64_t)(r->end - r->p)) {
        return 0;
    }
    out->p = r->p;
    out->end = r->p + n;
    r->p += n;
    return 1;
}

/* A length-delimited field as text: a new str, or NULL (invalid UTF-8: the caller
 * clears that error and steps aside, as protobuf rejects such a message). */
static inline PyObject *
text_of(Reader r)
{
    return PyUnicode_DecodeUTF8((const char *)r.p, r.end - r.p, NULL);
}

/* A parser's answer for a request not of the usual shape: None, so the caller takes
 * the general path, with any error on the way (invalid UTF-8, say) cleared; NULL only
 * when memory ran out. */
static inline PyObject *
not_usual(void)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        PyErr_Clear();
    }
    return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
}

/* Whether a and b hold the same bytes. */
static inline int
same(Reader a, Reader b)
{
    return (a.end - a.p) == (b.end - b.p) && memcmp(a.p, b.p, a.end - a.p) == 0;
}

#endif
