/*
 * bridge.capture._pcap: the record loop of classic pcap files, in C.
 *
 * PcapParser (bridge/capture/pcapfile.py) reads the file header and keeps the
 * chunk bookkeeping; per record it only needs the 16-byte record header decoded
 * and a Frame made: in Python that was a third of a decrypting run's time.
 *
 *   records(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)
 *       -> (frames, pos, need, absurd)
 *
 * frames: the complete records from pos on as frame_type objects (Frame: a
 * slots dataclass whose four slots are set directly, as
 * bridge.capture.frames.make_frame does); pos: where the first incomplete
 * record begins; need: the bytes it needs from there; absurd: the captured
 * length of a record over ``limit`` (parsing stops before it, the caller
 * reports it), else -1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

static Py_ssize_t slot_ts = -1, slot_linktype = -1, slot_data = -1, slot_orig = -1;
static PyTypeObject *bound_type = NULL;

static Py_ssize_t slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX && member->type != T_OBJECT) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    return member->offset;
}

static int bind(PyTypeObject *type)
{
    if (type == bound_type)
        return 0;
    Py_ssize_t ts = slot_offset(type, "timestamp_ns"), lt = slot_offset(type, "linktype"),
               data = slot_offset(type, "data"), orig = slot_offset(type, "orig_len");
    if (ts < 0 || lt < 0 || data < 0 || orig < 0)
        return -1;
    Py_XDECREF(bound_type);
    Py_INCREF(type);
    bound_type = type;
    slot_ts = ts, slot_linktype = lt, slot_data = data, slot_orig = orig;
    return 0;
}

static inline uint32_t rd32(const uint8_t *p, int little)
{
    return little ? ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24)
                  : ((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3]);
}

static inline void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    *(PyObject **)((char *)obj + offset) = value; /* steals value; the slot was empty */
}

static PyObject *records(PyObject *self, PyObject *args)
{
    PyTypeObject *type;
    Py_buffer buf;
    Py_ssize_t pos, record_header;
    int little;
    long long frac_mult;
    unsigned long long limit;
    int linktype;
    if (!PyArg_ParseTuple(args, "O!y*npnLKi:records", &PyType_Type, &type, &buf, &pos, &little, &record_header,
                          &frac_mult, &limit, &linktype))
        return NULL;
    PyObject *frames = NULL, *lt = NULL, *result = NULL;
    if (bind(type) < 0)
        goto done;
    if (pos < 0 || pos > buf.len || record_header < 16) {
        PyErr_SetString(PyExc_ValueError, "position or record header size out of range");
        goto done;
    }
    frames = PyList_New(0);
    lt = PyLong_FromLong(linktype);
    if (frames == NULL || lt == NULL)
        goto done;
    const uint8_t *p = buf.buf;
    Py_ssize_t n = buf.len, need = record_header;
    long long absurd = -1;
    while (1) {
        if (n - pos < record_header) {
            need = record_header;
            break;
        }
        uint32_t sec = rd32(p + pos, little), frac = rd32(p + pos + 4, little);
        uint32_t incl = rd32(p + pos + 8, little), orig = rd32(p + pos + 12, little);
        if (incl > limit) {
            absurd = incl;
            need = record_header;
            break;
        }
        Py_ssize_t start = pos + record_header;
        if ((Py_ssize_t)incl > n - start) {
            need = record_header + (Py_ssize_t)incl;
            break;
        }
        PyObject *frame = type->tp_alloc(type, 0);
        if (frame == NULL)
            goto done;
        PyObject *ts = PyLong_FromLongLong((long long)sec * 1000000000LL + (long long)frac * frac_mult);
        PyObject *data = PyBytes_FromStringAndSize((const char *)p + start, (Py_ssize_t)incl);
        PyObject *orig_o = PyLong_FromUnsignedLong(orig);
        if (ts == NULL || data == NULL || orig_o == NULL) {
            Py_XDECREF(ts);
            Py_XDECREF(data);
            Py_XDECREF(orig_o);
            Py_DECREF(frame);
            goto done;
        }
        Py_INCREF(lt);
        set_slot(frame, slot_ts, ts);
        set_slot(frame, slot_linktype, lt);
        set_slot(frame, slot_data, data);
        set_slot(frame, slot_orig, orig_o);
        int rc = PyList_Append(frames, frame);
        Py_DECREF(frame);
        if (rc < 0)
            goto done;
        pos = start + (Py_ssize_t)incl;
    }
    result = Py_BuildValue("(OnnL)", frames, pos, need, absurd);
done:
    Py_XDECREF(frames);
    Py_XDECREF(lt);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"records", records, METH_VARARGS,
     "records(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)"
     " -> (frames, pos, need, absurd): the complete pcap records of buf from pos on"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bridge.capture._pcap",
    .m_doc = "The record loop of classic pcap files, in C (see the source's header).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__pcap(void)
{
    return PyModule_Create(&module);
}
