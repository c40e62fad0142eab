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
 *
 *     listing(prefix, True) -> the same, except for a directory without
 *         folders: ((packed, files), False)
 *
 * ``packed`` holds its ``files`` files as ``joined`` below packs them
 * (``sig + key + NUL`` each, in order), made without the GIL: a folder whose
 * files match a remembered digest costs no Python object per file, and a
 * listing thread holds the GIL for one copy per folder.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIG_BYTES 40

#ifdef __APPLE__ /* the same fields, by their BSD names */
#define st_mtim st_mtimespec
#define st_ctim st_ctimespec
#endif

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

/* What the GIL-free part found of one entry. */
enum { SKIP = 0, FILE_ENTRY = 1, FOLDER_ENTRY = 2 };

typedef struct {
    size_t name; /* offset in the arena */
    const char *ptr; /* the name, once the arena has stopped growing */
    size_t len;
    int kind;
    unsigned char sig[SIG_BYTES];
} entry_t;

typedef struct {
    char *arena;
    size_t used, cap;
    entry_t *entries;
    size_t count, room;
} listing_t;

static int by_name(const void *a, const void *b) {
    const entry_t *x = a, *y = b;
    return strcmp(x->ptr, y->ptr);
}

static void free_listing(listing_t *l) {
    free(l->arena);
    free(l->entries);
}

/* Read, sort and stat one directory without the GIL: 0, or -1 when memory ran
 * out, -2 when the directory cannot be read, -3 when a value is too wide. */
static int read_listing(int fd, listing_t *l) {
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return -2;
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *ent = readdir(dir);
        if (ent == NULL) {
            if (errno != 0) {
                rc = -2; /* os.listdir raises here, which _listing reads as unreadable */
            }
            break;
        }
        const char *n = ent->d_name;
        if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0'))) {
            continue;
        }
        size_t len = strlen(n);
        if (l->used + len + 1 > l->cap) {
            size_t cap = (l->cap ? l->cap * 2 : 65536) + len + 1;
            char *grown = realloc(l->arena, cap);
            if (grown == NULL) {
                rc = -1;
                break;
            }
            l->arena = grown;
            l->cap = cap;
        }
        if (l->count == l->room) {
            size_t room = l->room ? l->room * 2 : 1024;
            entry_t *grown = realloc(l->entries, room * sizeof(entry_t));
            if (grown == NULL) {
                rc = -1;
                break;
            }
            l->entries = grown;
            l->room = room;
        }
        memcpy(l->arena + l->used, n, len + 1);
        l->entries[l->count].name = l->used;
        l->entries[l->count].len = len;
        l->entries[l->count].kind = SKIP;
        l->count++;
        l->used += len + 1;
    }
    for (size_t i = 0; i < l->count; i++) {
        l->entries[i].ptr = l->arena + l->entries[i].name;
    }
    if (rc == 0 && l->count > 1) { /* byte order, as Python sorts bytes */
        qsort(l->entries, l->count, sizeof(entry_t), by_name);
    }
    for (size_t i = 0; rc == 0 && i < l->count; i++) {
        entry_t *e = &l->entries[i];
        const char *n = e->ptr;
        struct stat st;
        if (fstatat(fd, n, &st, 0) != 0) {
            continue; /* vanished, dangling symlink, permission */
        }
        if (S_ISREG(st.st_mode)) {
            int64_t mtime_ns, ctime_ns;
            if (st.st_size < 0 || !to_ns((int64_t)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, &mtime_ns) ||
                !to_ns((int64_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec, &ctime_ns)) {
                rc = -3;
                break;
            }
            put_u64(e->sig, (uint64_t)st.st_dev);
            put_u64(e->sig + 8, (uint64_t)st.st_ino);
            put_u64(e->sig + 16, (uint64_t)st.st_size);
            put_u64(e->sig + 24, (uint64_t)mtime_ns);
            put_u64(e->sig + 32, (uint64_t)ctime_ns);
            e->kind = FILE_ENTRY;
        } else if (S_ISDIR(st.st_mode)) {
            struct stat lst;
            /* A symlinked folder is not walked (os.path.islink: an error is "not a link"). */
            if (!(fstatat(fd, n, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode))) {
                e->kind = FOLDER_ENTRY;
            }
        }
    }
    closedir(dir);
    return rc;
}

/* A listing without folders packed as ``joined`` packs it, in ``*out``
 * (malloc'ed): its size; -1 when there are folders or memory ran out. */
static Py_ssize_t pack_files(const char *prefix, size_t prefix_len, const listing_t *l,
                             char **out, Py_ssize_t *files) {
    size_t size = 0;
    Py_ssize_t count = 0;
    *out = NULL;
    for (size_t i = 0; i < l->count; i++) {
        const entry_t *e = &l->entries[i];
        if (e->kind == FOLDER_ENTRY) {
            return -1;
        }
        if (e->kind == FILE_ENTRY) {
            size += SIG_BYTES + prefix_len + e->len + 1;
            count++;
        }
    }
    char *at = *out = malloc(size ? size : 1);
    if (at == NULL) {
        return -1;
    }
    for (size_t i = 0; i < l->count; i++) {
        const entry_t *e = &l->entries[i];
        if (e->kind == FILE_ENTRY) {
            memcpy(at, e->sig, SIG_BYTES);
            memcpy(at + SIG_BYTES, prefix, prefix_len);
            memcpy(at + SIG_BYTES + prefix_len, e->ptr, e->len);
            at += SIG_BYTES + prefix_len + e->len;
            *at++ = '\0';
        }
    }
    *files = count;
    return (Py_ssize_t)size;
}

static PyObject *listing(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *arg;
    int packed = 0;
    if (!PyArg_ParseTuple(args, "O|p:listing", &arg, &packed)) {
        return NULL;
    }
    char *prefix;
    Py_ssize_t prefix_len;
    if (PyBytes_AsStringAndSize(arg, &prefix, &prefix_len) < 0) {
        return NULL;
    }
    if ((Py_ssize_t)strlen(prefix) != prefix_len) {
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    listing_t l = {NULL, 0, 0, NULL, 0, 0};
    int rc;
    char *pack = NULL;
    Py_ssize_t pack_size = -1, files = 0;
    /* The directory's reads and stats run without the GIL (``arg`` keeps
     * ``prefix`` alive): other threads list other folders meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    int fd = open(prefix, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        rc = -2;
    } else {
        rc = read_listing(fd, &l);
        if (rc == 0 && packed) {
            pack_size = pack_files(prefix, (size_t)prefix_len, &l, &pack, &files);
        }
    }
    Py_END_ALLOW_THREADS
    if (pack != NULL) {
        free_listing(&l);
        PyObject *blob = PyBytes_FromStringAndSize(pack, pack_size);
        free(pack);
        if (blob == NULL) {
            return NULL;
        }
        return Py_BuildValue("((Nn)O)", blob, files, Py_False);
    }
    if (rc == -1) {
        free_listing(&l);
        return PyErr_NoMemory();
    }
    if (rc == -2) {
        free_listing(&l);
        return empty_listing();
    }
    if (rc == -3) {
        free_listing(&l);
        Py_RETURN_NONE;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        free_listing(&l);
        return NULL;
    }
    int mixed = 0;
    for (size_t i = 0; i < l.count; i++) {
        entry_t *e = &l.entries[i];
        if (e->kind == SKIP) {
            continue;
        }
        Py_ssize_t n_len = (Py_ssize_t)e->len;
        int folder = e->kind == FOLDER_ENTRY;
        PyObject *key = PyBytes_FromStringAndSize(NULL, prefix_len + n_len + folder);
        if (key == NULL) {
            goto fail;
        }
        char *k = PyBytes_AS_STRING(key);
        memcpy(k, prefix, (size_t)prefix_len);
        memcpy(k + prefix_len, e->ptr, (size_t)n_len);
        PyObject *second;
        if (folder) {
            k[prefix_len + n_len] = '/';
            second = Py_None;
            Py_INCREF(second);
            mixed = 1;
        } else {
            second = PyBytes_FromStringAndSize((const char *)e->sig, SIG_BYTES);
            if (second == NULL) {
                Py_DECREF(key);
                goto fail;
            }
        }
        PyObject *entry = PyTuple_New(2);
        if (entry == NULL) {
            Py_DECREF(key);
            Py_DECREF(second);
            goto fail;
        }
        PyTuple_SET_ITEM(entry, 0, key);
        PyTuple_SET_ITEM(entry, 1, second);
        if (PyList_Append(out, entry) < 0) {
            Py_DECREF(entry);
            goto fail;
        }
        Py_DECREF(entry);
    }
    free_listing(&l);
    if (mixed && PyList_Sort(out) < 0) { /* "b/" sorts after "b.png" but the name "b" before it */
        Py_DECREF(out);
        return NULL;
    }
    return Py_BuildValue("(NO)", out, mixed ? Py_True : Py_False);
fail:
    free_listing(&l);
    Py_DECREF(out);
    return NULL;
}

/* joined(run) -> bytes: b"".join(sig + key + b"\0" for key, sig in run), what a
 * tile's digest is taken of, in one pass (no two new objects per file). */
static PyObject *joined(PyObject *self, PyObject *run) {
    (void)self;
    if (!PyList_Check(run)) {
        PyErr_SetString(PyExc_TypeError, "joined() takes a list of (key, sig) tuples");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(run), size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(run, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
            PyErr_SetString(PyExc_TypeError, "joined() takes a list of (key, sig) tuples");
            return NULL;
        }
        size += PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0)) +
                PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 1)) + 1;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL) {
        return NULL;
    }
    char *at = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(run, i);
        PyObject *key = PyTuple_GET_ITEM(item, 0), *sig = PyTuple_GET_ITEM(item, 1);
        memcpy(at, PyBytes_AS_STRING(sig), (size_t)PyBytes_GET_SIZE(sig));
        at += PyBytes_GET_SIZE(sig);
        memcpy(at, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
        at += PyBytes_GET_SIZE(key);
        *at++ = '\0';
    }
    return out;
}

static PyMethodDef methods[] = {
    {"joined", joined, METH_O,
     "joined(run) -> bytes: the concatenated sig + key + NUL of a tile's files."},
    {"listing", listing, METH_VARARGS,
     "listing(prefix, packed=False) -> (entries, has_folders) or None: see _status._listing."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "assetcache._walk", "One directory's listing for status, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__walk(void) { return PyModule_Create(&module); }
