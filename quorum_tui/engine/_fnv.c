/* 64-bit FNV-1a, the hash llama.cpp's RPC backend names its tensor cache files by
   (ggml-rpc.cpp, fnv_hash): offset basis 0xcbf29ce484222325, prime 0x100000001b3. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *fnv1a64(PyObject *self, PyObject *args) {
    Py_buffer view;
    unsigned long long seed = 0xcbf29ce484222325ULL;
    if (!PyArg_ParseTuple(args, "y*|K", &view, &seed)) {
        return NULL;
    }
    uint64_t hash = seed;
    const unsigned char *data = view.buf;
    Py_ssize_t len = view.len;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < len; ++i) {
        hash ^= data[i];
        hash *= 0x100000001b3ULL;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(hash);
}

static PyMethodDef methods[] = {
    {"fnv1a64", fnv1a64, METH_VARARGS,
     "fnv1a64(data, seed=0xcbf29ce484222325) -> int: 64-bit FNV-1a of a bytes-like object, "
     "continuing from `seed` (a previous call's result)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fnv", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fnv(void) { return PyModule_Create(&module); }
