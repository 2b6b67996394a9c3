/* Avro binary encoding of the event schemas in native code (issue 17).
 *
 * Every message is encoded and decoded as Avro four to six times on its way through the stages;
 * fastavro's generic reader and writer cost about 0.5 us per field (a 1 KB MessageReceived: 17 us
 * to decode, 19 to encode on the session-18 box), about a tenth of the pipeline's CPU at 1 KB.
 * Here a schema is first compiled (schemas/native.py) into a tree of tuples, and the tree is
 * walked in C. fastavro stays the reference: tests/test_avro_native.py holds both to the same
 * bytes and the same values, and the schemas this cannot compile (resolution between versions
 * included) still go through fastavro.
 *
 * Node shapes (the first item is the opcode):
 *   (NULL,) (BOOLEAN,) (INT,) (LONG,) (STRING,) (BYTES,)
 *   (TIMESTAMP, from_millis, to_millis)  timestamp-millis: a long and an aware datetime
 *   (ARRAY, item) (MAP, value)
 *   (ENUM, symbols: tuple[str], index: dict[str, int])
 *   (OPTION, null_index, node)            a union of "null" and one other type
 *   (RECORD, names: tuple[str], nodes: tuple, defaults: tuple)  a default is a 1-tuple or None
 *
 * Decoding only reads within the buffer it is given; any length, count or index that does not fit
 * is an error (ValueError), never a read past the end or an allocation larger than the input. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { OP_NULL, OP_BOOLEAN, OP_INT, OP_LONG, OP_STRING, OP_BYTES, OP_TIMESTAMP, OP_ARRAY,
       OP_MAP, OP_ENUM, OP_OPTION, OP_RECORD };

static int
opcode(PyObject *node)
{
    return (int)PyLong_AsLong(PyTuple_GET_ITEM(node, 0));
}

/* -- decoding ------------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *buf;
    Py_ssize_t pos, len;
} Reader;

static int
read_long(Reader *r, int64_t *out)
{
    uint64_t acc = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->len) {
            PyErr_SetString(PyExc_ValueError, "a number runs past the end of the record");
            return -1;
        }
        unsigned char b = r->buf[r->pos++];
        if (shift == 63 && (b & 0x7E)) {
            PyErr_SetString(PyExc_ValueError, "a number longer than 64 bits");
            return -1;
        }
        acc |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = (int64_t)((acc >> 1) ^ (~(acc & 1) + 1)); /* zigzag */
            return 0;
        }
    }
    PyErr_SetString(PyExc_ValueError, "a number longer than 64 bits");
    return -1;
}

/* a length, then that many octets that must lie within the record */
static int
read_span(Reader *r, const unsigned char **start, Py_ssize_t *n)
{
    int64_t len;
    if (read_long(r, &len) < 0)
        return -1;
    if (len < 0 || len > r->len - r->pos) {
        PyErr_Format(PyExc_ValueError, "a length of %lld does not fit in the record",
                     (long long)len);
        return -1;
    }
    *start = r->buf + r->pos;
    *n = (Py_ssize_t)len;
    r->pos += (Py_ssize_t)len;
    return 0;
}

/* the item count of the next block of an array or map (0 ends it); at most one item per
 * remaining octet: the compiler refuses items that can encode to nothing */
static int
read_block(Reader *r, Py_ssize_t *count)
{
    int64_t n;
    if (read_long(r, &n) < 0)
        return -1;
    if (n < 0) {
        int64_t size;
        if (n == INT64_MIN) {
            PyErr_SetString(PyExc_ValueError, "a block count out of range");
            return -1;
        }
        n = -n;
        if (read_long(r, &size) < 0) /* the block's size in octets: not needed */
            return -1;
    }
    if (n > r->len - r->pos) {
        PyErr_Format(PyExc_ValueError, "a block of %lld items does not fit in the record",
                     (long long)n);
        return -1;
    }
    *count = (Py_ssize_t)n;
    return 0;
}

static PyObject *decode_node(Reader *r, PyObject *node);

static PyObject *
decode_record(Reader *r, PyObject *node, Py_ssize_t fields)
{
    PyObject *names = PyTuple_GET_ITEM(node, 1), *nodes = PyTuple_GET_ITEM(node, 2);
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < fields; i++) {
        PyObject *v = decode_node(r, PyTuple_GET_ITEM(nodes, i));
        if (v == NULL || PyDict_SetItem(d, PyTuple_GET_ITEM(names, i), v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}

static PyObject *
decode_node(Reader *r, PyObject *node)
{
    const unsigned char *s;
    Py_ssize_t n;
    int64_t v;
    switch (opcode(node)) {
    case OP_NULL:
        Py_RETURN_NONE;
    case OP_BOOLEAN:
        if (r->pos >= r->len) {
            PyErr_SetString(PyExc_ValueError, "a boolean past the end of the record");
            return NULL;
        }
        if (r->buf[r->pos] > 1) {
            PyErr_Format(PyExc_ValueError, "a boolean of %d", r->buf[r->pos]);
            return NULL;
        }
        return PyBool_FromLong(r->buf[r->pos++]);
    case OP_INT:
    case OP_LONG:
        if (read_long(r, &v) < 0)
            return NULL;
        return PyLong_FromLongLong(v);
    case OP_STRING:
        if (read_span(r, &s, &n) < 0)
            return NULL;
        return PyUnicode_DecodeUTF8((const char *)s, n, NULL);
    case OP_BYTES:
        if (read_span(r, &s, &n) < 0)
            return NULL;
        return PyBytes_FromStringAndSize((const char *)s, n);
    case OP_TIMESTAMP: {
        if (read_long(r, &v) < 0)
            return NULL;
        PyObject *ms = PyLong_FromLongLong(v);
        if (ms == NULL)
            return NULL;
        PyObject *dt = PyObject_CallOneArg(PyTuple_GET_ITEM(node, 1), ms);
        Py_DECREF(ms);
        return dt;
    }
    case OP_ARRAY: {
        PyObject *item = PyTuple_GET_ITEM(node, 1);
        PyObject *list = PyList_New(0);
        Py_ssize_t count;
        if (list == NULL)
            return NULL;
        for (;;) {
            if (read_block(r, &count) < 0)
                goto array_fail;
            if (count == 0)
                return list;
            for (Py_ssize_t i = 0; i < count; i++) {
                PyObject *x = decode_node(r, item);
                if (x == NULL || PyList_Append(list, x) < 0) {
                    Py_XDECREF(x);
                    goto array_fail;
                }
                Py_DECREF(x);
            }
        }
    array_fail:
        Py_DECREF(list);
        return NULL;
    }
    case OP_MAP: {
        PyObject *value = PyTuple_GET_ITEM(node, 1);
        PyObject *d = PyDict_New();
        Py_ssize_t count;
        if (d == NULL)
            return NULL;
        for (;;) {
            if (read_block(r, &count) < 0)
                goto map_fail;
            if (count == 0)
                return d;
            for (Py_ssize_t i = 0; i < count; i++) {
                if (read_span(r, &s, &n) < 0)
                    goto map_fail;
                PyObject *k = PyUnicode_DecodeUTF8((const char *)s, n, NULL);
                if (k == NULL)
                    goto map_fail;
                PyObject *x = decode_node(r, value);
                if (x == NULL || PyDict_SetItem(d, k, x) < 0) {
                    Py_DECREF(k);
                    Py_XDECREF(x);
                    goto map_fail;
                }
                Py_DECREF(k);
                Py_DECREF(x);
            }
        }
    map_fail:
        Py_DECREF(d);
        return NULL;
    }
    case OP_ENUM: {
        PyObject *symbols = PyTuple_GET_ITEM(node, 1);
        if (read_long(r, &v) < 0)
            return NULL;
        if (v < 0 || v >= PyTuple_GET_SIZE(symbols)) {
            PyErr_Format(PyExc_ValueError, "enum index %lld out of range", (long long)v);
            return NULL;
        }
        PyObject *sym = PyTuple_GET_ITEM(symbols, (Py_ssize_t)v);
        Py_INCREF(sym);
        return sym;
    }
    case OP_OPTION: {
        long null_index = PyLong_AsLong(PyTuple_GET_ITEM(node, 1));
        if (read_long(r, &v) < 0)
            return NULL;
        if (v != 0 && v != 1) {
            PyErr_Format(PyExc_ValueError, "union index %lld out of range", (long long)v);
            return NULL;
        }
        if (v == null_index)
            Py_RETURN_NONE;
        return decode_node(r, PyTuple_GET_ITEM(node, 2));
    }
    case OP_RECORD:
        return decode_record(r, node, PyTuple_GET_SIZE(PyTuple_GET_ITEM(node, 1)));
    }
    PyErr_SetString(PyExc_SystemError, "unknown Avro node");
    return NULL;
}

/* decode(program, data, start, view_tail) -> (record, end, tail_start, tail_length)
 *
 * view_tail: the program's last field is bytes; it is not copied: its value is None and
 * (tail_start, tail_length) say where its octets lie (else both are -1). */
static PyObject *
decode(PyObject *self, PyObject *args)
{
    PyObject *program;
    Py_buffer view;
    Py_ssize_t start;
    int view_tail;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!y*np", &PyTuple_Type, &program, &view, &start, &view_tail))
        return NULL;
    Reader r = {view.buf, start, view.len};
    PyObject *record = NULL, *result = NULL;
    Py_ssize_t tail_start = -1, tail_len = -1;
    if (start < 0 || start > view.len) {
        PyErr_SetString(PyExc_ValueError, "start outside the data");
        goto done;
    }
    if (opcode(program) != OP_RECORD) {
        PyErr_SetString(PyExc_TypeError, "a program decodes a record");
        goto done;
    }
    Py_ssize_t fields = PyTuple_GET_SIZE(PyTuple_GET_ITEM(program, 1));
    PyObject *nodes = PyTuple_GET_ITEM(program, 2);
    if (view_tail && (fields == 0 || opcode(PyTuple_GET_ITEM(nodes, fields - 1)) != OP_BYTES)) {
        PyErr_SetString(PyExc_TypeError, "view_tail needs a last field of type bytes");
        goto done;
    }
    record = decode_record(&r, program, view_tail ? fields - 1 : fields);
    if (record == NULL)
        goto done;
    if (view_tail) {
        const unsigned char *s;
        if (read_span(&r, &s, &tail_len) < 0)
            goto done;
        tail_start = s - r.buf;
        if (PyDict_SetItem(record, PyTuple_GET_ITEM(PyTuple_GET_ITEM(program, 1), fields - 1),
                           Py_None) < 0)
            goto done;
    }
    result = Py_BuildValue("Onnn", record, r.pos, tail_start, tail_len);
done:
    Py_XDECREF(record);
    PyBuffer_Release(&view);
    return result;
}

/* -- encoding ------------------------------------------------------------------------------- */

typedef struct {
    PyObject *out; /* a bytes object grown in place (_PyBytes_Resize) */
    Py_ssize_t len;
} Writer;

static int
reserve(Writer *w, Py_ssize_t more)
{
    Py_ssize_t cap = PyBytes_GET_SIZE(w->out);
    if (w->len + more <= cap)
        return 0;
    Py_ssize_t want = cap * 2 > w->len + more ? cap * 2 : w->len + more;
    return _PyBytes_Resize(&w->out, want);
}

static int
put(Writer *w, const void *data, Py_ssize_t n)
{
    if (reserve(w, n) < 0)
        return -1;
    memcpy(PyBytes_AS_STRING(w->out) + w->len, data, (size_t)n);
    w->len += n;
    return 0;
}

static int
put_long(Writer *w, int64_t v)
{
    unsigned char tmp[10];
    int n = 0;
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    while (z > 0x7F) {
        tmp[n++] = (unsigned char)((z & 0x7F) | 0x80);
        z >>= 7;
    }
    tmp[n++] = (unsigned char)z;
    return put(w, tmp, n);
}

static int
wrong_type(const char *what, PyObject *value)
{
    PyErr_Format(PyExc_TypeError, "must be %s, not %.100s", what, Py_TYPE(value)->tp_name);
    return -1;
}

/* an int of the given range; a float (fastavro truncates it) and a bool (which fastavro takes
 * as a number, except in a union) are refused */
static int
long_of(PyObject *value, int64_t lo, int64_t hi, int64_t *out)
{
    if (!PyLong_Check(value) || PyBool_Check(value))
        return wrong_type("an int", value);
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%R is out of range", value);
        return -1;
    }
    *out = v;
    return 0;
}

static int
put_text(Writer *w, PyObject *value)
{
    if (!PyUnicode_Check(value))
        return wrong_type("string", value);
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(value, &n); /* refuses lone surrogates */
    if (s == NULL || put_long(w, n) < 0)
        return -1;
    return put(w, s, n);
}

static int encode_node(Writer *w, PyObject *node, PyObject *value);

/* an error from inside a record's field: a ValueError whose text starts with the field's path
 * (".recipients.address: must be a str, not int"); MemoryError and the like pass unchanged */
static void
in_field(PyObject *name)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL || !PyErr_GivenExceptionMatches(type, PyExc_Exception) ||
        PyErr_GivenExceptionMatches(type, PyExc_MemoryError)) {
        PyErr_Restore(type, value, tb);
        return;
    }
    PyObject *text = PyObject_Str(value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (text == NULL)
        return;
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    const char *sep = n == 0 ? "" : (PyUnicode_READ_CHAR(text, 0) == '.' ? "" : ": ");
    PyErr_Format(PyExc_ValueError, ".%U%s%U", name, sep, text);
    Py_DECREF(text);
}

static int
encode_record(Writer *w, PyObject *node, PyObject *value)
{
    PyObject *names = PyTuple_GET_ITEM(node, 1), *nodes = PyTuple_GET_ITEM(node, 2);
    PyObject *defaults = PyTuple_GET_ITEM(node, 3);
    Py_ssize_t fields = PyTuple_GET_SIZE(names), present = 0;
    if (!PyDict_Check(value))
        return wrong_type("a dict", value);
    for (Py_ssize_t i = 0; i < fields; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *v = PyDict_GetItemWithError(value, name);
        if (v != NULL) {
            present++;
            Py_INCREF(v);
        } else {
            PyObject *dflt = PyTuple_GET_ITEM(defaults, i);
            if (PyErr_Occurred())
                return -1;
            if (dflt == Py_None) {
                PyErr_Format(PyExc_ValueError,
                             "Field %U is specified in the schema but missing from the record",
                             name);
                return -1;
            }
            v = Py_NewRef(PyTuple_GET_ITEM(dflt, 0));
        }
        int rc = encode_node(w, PyTuple_GET_ITEM(nodes, i), v);
        Py_DECREF(v);
        if (rc < 0) {
            in_field(name);
            return -1;
        }
    }
    if (PyDict_GET_SIZE(value) > present) {
        PyObject *key;
        Py_ssize_t pos = 0;
        while (PyDict_Next(value, &pos, &key, NULL)) {
            int known = PySequence_Contains(names, key);
            if (known < 0)
                return -1;
            if (!known) {
                PyErr_Format(PyExc_ValueError, "record contains more fields than the schema specifies: %S",
                             key);
                return -1;
            }
        }
    }
    return 0;
}

static int
encode_node(Writer *w, PyObject *node, PyObject *value)
{
    int64_t v;
    switch (opcode(node)) {
    case OP_NULL:
        if (value != Py_None)
            return wrong_type("None", value);
        return 0;
    case OP_BOOLEAN: {
        if (!PyBool_Check(value))
            return wrong_type("a bool", value);
        unsigned char b = value == Py_True;
        return put(w, &b, 1);
    }
    case OP_INT:
        if (long_of(value, INT32_MIN, INT32_MAX, &v) < 0)
            return -1;
        return put_long(w, v);
    case OP_LONG:
        if (long_of(value, INT64_MIN, INT64_MAX, &v) < 0)
            return -1;
        return put_long(w, v);
    case OP_STRING:
        return put_text(w, value);
    case OP_BYTES: {
        Py_buffer view;
        if (!PyObject_CheckBuffer(value) || PyUnicode_Check(value))
            return wrong_type("bytes", value);
        if (PyObject_GetBuffer(value, &view, PyBUF_CONTIG_RO) < 0)
            return -1;
        int rc = put_long(w, view.len) < 0 ? -1 : put(w, view.buf, view.len);
        PyBuffer_Release(&view);
        return rc;
    }
    case OP_TIMESTAMP: {
        if (PyLong_Check(value) && !PyBool_Check(value)) {
            if (long_of(value, INT64_MIN, INT64_MAX, &v) < 0)
                return -1;
            return put_long(w, v);
        }
        PyObject *ms = PyObject_CallOneArg(PyTuple_GET_ITEM(node, 2), value);
        if (ms == NULL)
            return -1;
        int rc = long_of(ms, INT64_MIN, INT64_MAX, &v);
        Py_DECREF(ms);
        return rc < 0 ? -1 : put_long(w, v);
    }
    case OP_ARRAY: {
        PyObject *item = PyTuple_GET_ITEM(node, 1);
        if (!PyList_Check(value) && !PyTuple_Check(value))
            return wrong_type("a list", value);
        /* a tuple of its items, held: encoding an item may run Python code */
        PyObject *seq = PySequence_Tuple(value);
        if (seq == NULL)
            return -1;
        Py_ssize_t n = PyTuple_GET_SIZE(seq);
        int rc = 0;
        if (n > 0 && put_long(w, n) < 0)
            rc = -1;
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
            rc = encode_node(w, item, PyTuple_GET_ITEM(seq, i));
        Py_DECREF(seq);
        return rc < 0 ? -1 : put_long(w, 0);
    }
    case OP_MAP: {
        PyObject *vnode = PyTuple_GET_ITEM(node, 1);
        if (!PyDict_Check(value))
            return wrong_type("a dict", value);
        if (PyDict_GET_SIZE(value) == 0)
            return put_long(w, 0);
        /* its items, held: encoding a value may run Python code (a timestamp's conversion) */
        PyObject *items = PyDict_Items(value);
        if (items == NULL)
            return -1;
        Py_ssize_t n = PyList_GET_SIZE(items);
        int rc = put_long(w, n);
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
            PyObject *kv = PyList_GET_ITEM(items, i);
            rc = put_text(w, PyTuple_GET_ITEM(kv, 0));
            if (rc == 0)
                rc = encode_node(w, vnode, PyTuple_GET_ITEM(kv, 1));
        }
        Py_DECREF(items);
        return rc < 0 ? -1 : put_long(w, 0);
    }
    case OP_ENUM: {
        PyObject *index = PyTuple_GET_ITEM(node, 2);
        if (!PyUnicode_Check(value))
            return wrong_type("string", value);
        /* a str subclass (a StrEnum member) is looked up by its text, not by its own hash */
        PyObject *text = PyUnicode_CheckExact(value) ? Py_NewRef(value) : PyUnicode_FromObject(value);
        if (text == NULL)
            return -1;
        PyObject *i = PyDict_GetItemWithError(index, text);
        Py_DECREF(text);
        if (i == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "%R is not a symbol of the enum", value);
            return -1;
        }
        return put_long(w, PyLong_AsLongLong(i));
    }
    case OP_OPTION: {
        long null_index = PyLong_AsLong(PyTuple_GET_ITEM(node, 1));
        if (value == Py_None)
            return put_long(w, null_index);
        if (put_long(w, 1 - null_index) < 0)
            return -1;
        return encode_node(w, PyTuple_GET_ITEM(node, 2), value);
    }
    case OP_RECORD:
        return encode_record(w, node, value);
    }
    PyErr_SetString(PyExc_SystemError, "unknown Avro node");
    return -1;
}

/* encode(program, record, prefix) -> prefix + the record's Avro binary encoding */
static PyObject *
encode(PyObject *self, PyObject *args)
{
    PyObject *program, *record;
    Py_buffer prefix;
    (void)self;
    if (!PyArg_ParseTuple(args, "O!Oy*", &PyTuple_Type, &program, &record, &prefix))
        return NULL;
    Writer w = {PyBytes_FromStringAndSize(NULL, 512 + prefix.len), 0};
    if (w.out == NULL) {
        PyBuffer_Release(&prefix);
        return NULL;
    }
    int rc = put(&w, prefix.buf, prefix.len);
    PyBuffer_Release(&prefix);
    if (rc < 0 || encode_node(&w, program, record) < 0 || _PyBytes_Resize(&w.out, w.len) < 0) {
        Py_XDECREF(w.out);
        return NULL;
    }
    return w.out;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(program, data, start, view_tail) -> (record, end, tail_start, tail_length)"},
    {"encode", encode, METH_VARARGS, "encode(program, record, prefix) -> bytes"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "schemas._avro",
    .m_doc = "Avro binary encoding of compiled schemas (schemas.native) in native code.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__avro(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "NULL", OP_NULL) < 0 ||
        PyModule_AddIntConstant(m, "BOOLEAN", OP_BOOLEAN) < 0 ||
        PyModule_AddIntConstant(m, "INT", OP_INT) < 0 ||
        PyModule_AddIntConstant(m, "LONG", OP_LONG) < 0 ||
        PyModule_AddIntConstant(m, "STRING", OP_STRING) < 0 ||
        PyModule_AddIntConstant(m, "BYTES", OP_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "TIMESTAMP", OP_TIMESTAMP) < 0 ||
        PyModule_AddIntConstant(m, "ARRAY", OP_ARRAY) < 0 ||
        PyModule_AddIntConstant(m, "MAP", OP_MAP) < 0 ||
        PyModule_AddIntConstant(m, "ENUM", OP_ENUM) < 0 ||
        PyModule_AddIntConstant(m, "OPTION", OP_OPTION) < 0 ||
        PyModule_AddIntConstant(m, "RECORD", OP_RECORD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
