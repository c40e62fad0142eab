/* assetcache._walk: one directory's listing for ``status``, in C.
 *
 * The pure-Python ``_status._listing`` is the reference and the fallback;
 * this is the same function for a directory that lies wholly inside the
 * scanned range. Per file it spares the interpreter building an
 * ``os.stat_result`` (three float times and three nanosecond times from big
 * integers) only to pack five of its fields: a file costs its ``fstatat``
 * and little else, which is what ``git status`` pays per file.
 *
 *     listing(prefix: bytes) -> tuple[list[tuple[bytes, bytes | None]], bool] | None
 *
 * ``prefix`` ends with "/". Entries are sorted: a regular file (symlinks
 * followed) as ``(prefix + name, sig)`` with ``sig`` the little-endian
 * ``<QQQqq`` packing of (dev, ino, size, mtime_ns, ctime_ns), a folder that
 * is not a symlink as ``(prefix + name + "/", None)``; anything else, and
 * entries that vanish or cannot be stat'ed, are left out. The bool says
 * whether there are folders. ``([], False)`` when the directory cannot be
 * read; ``None`` when a value does not fit the packing (the caller then
 * uses the Python version, which knows the wider format).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIG_BYTES 40

static void put_u64(unsigned char *out, uint64_t v) {
    for (int i = 0; i < 8; i++) {
        out[i] = (unsigned char)(v >> (8 * i));
    }
}

/* Seconds and nanoseconds as nanoseconds; 0 when it overflows 64 bits. */
static int to_ns(int64_t sec, long nsec, int64_t *out) {
    if (sec > INT64_MAX / 1000000000 - 1 || sec < INT64_MIN / 1000000000 + 1) {
        return 0;
    }
    *out = sec * 1000000000 + (int64_t)nsec;
    return 1;
}

static PyObject *empty_listing(void) {
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NO)", out, Py_False);
}

static PyObject *listing(PyObject *self, PyObject *arg) {
    (void)self;
    char *prefix;
    Py_ssize_t prefix_len;
    if (PyBytes_AsStringAndSize(arg, &prefix, &prefix_len) < 0) {
        return NULL;
    }
    if ((Py_ssize_t)strlen(prefix) != prefix_len) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    int fd;
    DIR *dir;
    Py_BEGIN_ALLOW_THREADS
    fd = open(prefix, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    dir = fd < 0 ? NULL : fdopendir(fd);
    Py_END_ALLOW_THREADS
    if (dir == NULL) {
        if (fd >= 0) {
            close(fd);
        }
        return empty_listing();
    }
    PyObject *names = PyList_New(0);
    if (names == NULL) {
        closedir(dir);
        return NULL;
    }
    for (;;) {
        struct dirent *ent;
        errno = 0;
        ent = readdir(dir);
        if (ent == NULL) {
            break; /* the end, or a read error: like os.listdir's partial view */
        }
        const char *n = ent->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'))) {
            continue;
        }
        PyObject *name = PyBytes_FromString(n);
        if (name == NULL || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            closedir(dir);
            return NULL;
        }
        Py_DECREF(name);
    }
    if (errno != 0) { /* os.listdir raises here, which _listing reads as unreadable */
        Py_DECREF(names);
        closedir(dir);
        return empty_listing();
    }
    if (PyList_Sort(names) < 0) {
        Py_DECREF(names);
        closedir(dir);
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        Py_DECREF(names);
        closedir(dir);
        return NULL;
    }
    int mixed = 0, too_wide = 0;
    Py_ssize_t count = PyList_GET_SIZE(names);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        const char *n = PyBytes_AS_STRING(name);
        Py_ssize_t n_len = PyBytes_GET_SIZE(name);
        struct stat st;
        if (fstatat(fd, n, &st, 0) != 0) {
            continue; /* vanished, dangling symlink, permission */
        }
        PyObject *entry = NULL;
        if (S_ISREG(st.st_mode)) {
            int64_t mtime_ns, ctime_ns;
            if (st.st_size < 0 || !to_ns((int64_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, &mtime_ns) ||
                !to_ns((int64_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec, &ctime_ns)) {
                too_wide = 1;
                break;
            }
            unsigned char sig[SIG_BYTES];
            put_u64(sig, (uint64_t)st.st_dev);
            put_u64(sig + 8, (uint64_t)st.st_ino);
            put_u64(sig + 16, (uint64_t)st.st_size);
            put_u64(sig + 24, (uint64_t)mtime_ns);
            put_u64(sig + 32, (uint64_t)ctime_ns);
            PyObject *key = PyBytes_FromStringAndSize(NULL, prefix_len + n_len);
            if (key == NULL) {
                goto fail;
            }
            memcpy(PyBytes_AS_STRING(key), prefix, (size_t)prefix_len);
            memcpy(PyBytes_AS_STRING(key) + prefix_len, n, (size_t)n_len);
            PyObject *packed = PyBytes_FromStringAndSize((const char *)sig, SIG_BYTES);
            if (packed == NULL) {
                Py_DECREF(key);
                goto fail;
            }
            entry = PyTuple_Pack(2, key, packed);
            Py_DECREF(key);
            Py_DECREF(packed);
        } else if (S_ISDIR(st.st_mode)) {
            struct stat lst;
            /* A symlinked folder is not walked (os.path.islink: an error is "not a link"). */
            if (fstatat(fd, n, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode)) {
                continue;
            }
            PyObject *key = PyBytes_FromStringAndSize(NULL, prefix_len + n_len + 1);
            if (key == NULL) {
                goto fail;
            }
            char *k = PyBytes_AS_STRING(key);
            memcpy(k, prefix, (size_t)prefix_len);
            memcpy(k + prefix_len, n, (size_t)n_len);
            k[prefix_len + n_len] = '/';
            entry = PyTuple_Pack(2, key, Py_None);
            Py_DECREF(key);
            mixed = 1;
        } else {
            continue;
        }
        if (entry == NULL || PyList_Append(out, entry) < 0) {
            Py_XDECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
    }
    Py_DECREF(names);
    closedir(dir);
    if (too_wide) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    if (mixed && PyList_Sort(out) < 0) { /* "b/" sorts after "b.png" but the name "b" before it */
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(NO)", out, mixed ? Py_True : Py_False);
fail:
    Py_DECREF(names);
    Py_DECREF(out);
    closedir(dir);
    return NULL;
}

static PyMethodDef methods[] = {
    {"listing", listing, METH_O,
     "listing(prefix) -> (entries, has_folders) or None: see _status._listing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "assetcache._walk", "One directory's listing for status, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void) { return PyModule_Create(&module); }
