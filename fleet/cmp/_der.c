/* The three DER primitives the codec calls most, in C: read_tlv, tlv and sequence.
 *
 * An enrollment calls them about 80 times on each side (the client's ir, ip, certConf and
 * pkiConf; the CA's the same), so their call overhead counts. Each handles only the common case
 * (bytes objects, single-octet tags, lengths below 4 GiB) and hands everything else, errors
 * included, to the Python function it replaces, which stays the reference: fleet.cmp._accel
 * installs these only after checking that they agree with it.
 * Optional: without a compiler, fleet runs on the Python versions. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *py_read_tlv = NULL, *py_tlv = NULL, *py_sequence = NULL;

static PyObject *call_python(PyObject *func, PyObject *const *args, Py_ssize_t nargs) {
    if (func == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "fleet.cmp._der used before install()");
        return NULL;
    }
    return PyObject_Vectorcall(func, args, nargs, NULL);
}

static PyObject *triple(long tag, Py_ssize_t start, Py_ssize_t end) {
    PyObject *t = PyLong_FromLong(tag), *s = PyLong_FromSsize_t(start), *e = PyLong_FromSsize_t(end);
    PyObject *result = (t && s && e) ? PyTuple_Pack(3, t, s, e) : NULL;
    Py_XDECREF(t);
    Py_XDECREF(s);
    Py_XDECREF(e);
    return result;
}

/* read_tlv(data, pos, end) -> (tag, content start, content end): der.read_tlv's fast path. */
static PyObject *read_tlv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs == 3 && PyBytes_CheckExact(args[0]) && PyLong_CheckExact(args[1]) && PyLong_CheckExact(args[2])) {
        const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
        Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
        Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
        Py_ssize_t end = PyLong_AsSsize_t(args[2]);
        if (PyErr_Occurred())
            PyErr_Clear();  /* huge values: the Python function decides */
        else if (pos >= 0 && end <= size && pos + 2 <= end && (d[pos] & 0x1F) != 0x1F) {
            unsigned int first = d[pos + 1];
            Py_ssize_t n, cstart;
            if (first < 0x80) {
                n = first;
                cstart = pos + 2;
            } else if (first == 0x81 && pos + 3 <= end && d[pos + 2] >= 0x80) {
                n = d[pos + 2];
                cstart = pos + 3;
            } else if (first == 0x82 && pos + 4 <= end && d[pos + 2] != 0) {
                n = ((Py_ssize_t)d[pos + 2] << 8) | d[pos + 3];
                cstart = pos + 4;
            } else {
                n = -1;
                cstart = 0;
            }
            if (n >= 0 && cstart + n <= end)
                return triple(d[pos], cstart, cstart + n);
        }
    }
    return call_python(py_read_tlv, args, nargs);
}

/* The TLV of ``tag`` (one octet) around ``content`` (DER length, minimal). */
static PyObject *build(unsigned char tag, PyObject *const *parts, Py_ssize_t count) {
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        n += PyBytes_GET_SIZE(parts[i]);
    unsigned char head[6];
    Py_ssize_t hlen;
    head[0] = tag;
    if (n < 0x80) {
        head[1] = (unsigned char)n;
        hlen = 2;
    } else {
        int octets = n <= 0xFF ? 1 : n <= 0xFFFF ? 2 : n <= 0xFFFFFF ? 3 : 4;
        head[1] = (unsigned char)(0x80 | octets);
        for (int i = 0; i < octets; i++)
            head[2 + i] = (unsigned char)(n >> (8 * (octets - 1 - i)));
        hlen = 2 + octets;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, hlen + n);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, head, (size_t)hlen);
    p += hlen;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t len = PyBytes_GET_SIZE(parts[i]);
        memcpy(p, PyBytes_AS_STRING(parts[i]), (size_t)len);
        p += len;
    }
    return out;
}

static int all_bytes(PyObject *const *parts, Py_ssize_t count, Py_ssize_t limit) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_CheckExact(parts[i]))
            return 0;
        total += PyBytes_GET_SIZE(parts[i]);
        if (total > limit)
            return 0;
    }
    return 1;
}

#define MAX_CONTENT 0x7FFFFFFF /* lengths up to 4 octets here; longer ones in Python */

/* tlv(tag, content) -> bytes: der.tlv. */
static PyObject *tlv(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs == 2 && PyLong_CheckExact(args[0]) && all_bytes(args + 1, 1, MAX_CONTENT)) {
        long tag = PyLong_AsLong(args[0]);
        if (tag >= 0 && tag <= 0xFF)
            return build((unsigned char)tag, args + 1, 1);
        PyErr_Clear();
    }
    return call_python(py_tlv, args, nargs);
}

/* sequence(*parts) -> bytes: der.sequence. */
static PyObject *sequence(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (all_bytes(args, nargs, MAX_CONTENT))
        return build(0x30, args, nargs);
    return call_python(py_sequence, args, nargs);
}

/* install(read_tlv, tlv, sequence): the Python functions to hand the uncommon cases to. */
static PyObject *install(PyObject *self, PyObject *args) {
    PyObject *r, *t, *s;
    if (!PyArg_ParseTuple(args, "OOO", &r, &t, &s))
        return NULL;
    Py_XSETREF(py_read_tlv, Py_NewRef(r));
    Py_XSETREF(py_tlv, Py_NewRef(t));
    Py_XSETREF(py_sequence, Py_NewRef(s));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_tlv", (PyCFunction)(void (*)(void))read_tlv, METH_FASTCALL, "read_tlv(data, pos, end) -> (tag, start, end)"},
    {"tlv", (PyCFunction)(void (*)(void))tlv, METH_FASTCALL, "tlv(tag, content) -> bytes"},
    {"sequence", (PyCFunction)(void (*)(void))sequence, METH_FASTCALL, "sequence(*parts) -> bytes"},
    {"install", install, METH_VARARGS, "install(read_tlv, tlv, sequence): the Python fallbacks"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_der", NULL, -1, methods};

PyMODINIT_FUNC PyInit__der(void) { return PyModule_Create(&module); }
