/*
 * bridge.capture._records: the per-frame loops of the capture readers, in C.
 *
 * The readers (bridge/capture/pcapfile.py, bridge/capture/afpacket.py) keep
 * their file headers, ring geometry and bookkeeping in Python; per frame they
 * only need a record header decoded and a Frame made: in Python that was a
 * third of a decrypting run's time.
 *
 *   pcap(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)
 *       -> (frames, pos, need, absurd)
 *
 * frames: the complete records from pos on as frame_type objects (Frame: a
 * slots dataclass whose four slots are set directly, as
 * bridge.capture.frames.make_frame does); pos: where the first incomplete
 * record begins; need: the bytes it needs from there; absurd: the captured
 * length of a record over ``limit`` (parsing stops before it, the caller
 * reports it), else -1.
 *
 *   pcap_batch(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)
 *       -> (batch, pos, need, absurd)
 *
 * The same, the frames as one FrameBatch: a sequence of frame_type objects made
 * when an item is read, over buf (kept) and an array of BatchRecord (_batch.h,
 * exposed by the buffer protocol): the compiled engine reads the frames in place
 * and a frame it takes is never made an object.
 *
 *   tpacket_v3(frame_type, ring, block, snaplen) -> batch
 *
 * The frames of one TPACKET_V3 ring block at offset ``block`` of ``ring`` (the
 * mmap of an AF_PACKET socket's PACKET_RX_RING, a block the kernel handed to
 * user space): each tpacket3_hdr's frame, at most ``snaplen`` bytes, with the
 * 802.1Q tag the kernel stripped put back (TP_STATUS_VLAN_VALID), timestamped
 * with the kernel's time (the wall clock where it gave none).  Every offset is
 * checked against the ring's size: a block that does not fit raises ValueError.
 *
 * They come as one FrameBatch: copied out of the ring into one bytes object
 * (the block goes back to the kernel at once), read in place by the compiled
 * engine as a capture file's frames are.
 *
 *   pack_pcap(buffer, timestamp_ns, frames, nanosecond, snaplen) -> frame_bytes
 *
 * The other way: the pcap records of frames to write (see the function).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_batch.h"
#include "_pcap_record.h"
#include "_records_core.h"

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

static inline void set_slot(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    *(PyObject **)((char *)obj + offset) = value; /* steals value; the slot was empty */
}

/* One frame object with its four slots (linktype shared). */
static PyObject *make(PyTypeObject *type, long long ts, PyObject *linktype, PyObject *data, unsigned long orig)
{
    PyObject *frame = type->tp_alloc(type, 0);
    PyObject *ts_o = PyLong_FromLongLong(ts), *orig_o = PyLong_FromUnsignedLong(orig);
    if (frame == NULL || ts_o == NULL || orig_o == NULL) {
        Py_XDECREF(frame);
        Py_XDECREF(ts_o);
        Py_XDECREF(orig_o);
        Py_DECREF(data);
        return NULL;
    }
    Py_INCREF(linktype);
    set_slot(frame, slot_ts, ts_o);
    set_slot(frame, slot_linktype, linktype);
    set_slot(frame, slot_data, data);
    set_slot(frame, slot_orig, orig_o);
    return frame;
}

static PyObject *pcap(PyObject *self, PyObject *args)
{
    PyTypeObject *type;
    Py_buffer buf;
    Py_ssize_t pos, record_header;
    int little;
    long long frac_mult;
    unsigned long long limit;
    int linktype;
    if (!PyArg_ParseTuple(args, "O!y*npnLKi:pcap", &PyType_Type, &type, &buf, &pos, &little, &record_header,
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
    BatchRecord r;
    while (next_record(p, n, pos, little, record_header, frac_mult, limit, &r, &need, &absurd) == RECORD_OK) {
        PyObject *data = PyBytes_FromStringAndSize((const char *)p + r.offset, (Py_ssize_t)r.length);
        if (data == NULL)
            goto done;
        PyObject *frame = make(type, r.timestamp_ns, lt, data, r.orig_len);
        if (frame == NULL)
            goto done;
        int rc = PyList_Append(frames, frame);
        Py_DECREF(frame);
        if (rc < 0)
            goto done;
        pos = (Py_ssize_t)(r.offset + r.length);
    }
    result = Py_BuildValue("(OnnL)", frames, pos, need, absurd);
done:
    Py_XDECREF(frames);
    Py_XDECREF(lt);
    PyBuffer_Release(&buf);
    return result;
}

/* ------------------------------------------------------------------------- */
/* FrameBatch                                                                  */

typedef struct {
    PyObject_HEAD
    PyObject *buffer; /* bytes */
    PyTypeObject *frame_type;
    PyObject *linktype; /* int, shared by the frames */
    BatchRecord *records;
    Py_ssize_t count, capacity;
} FrameBatchObject;

static PyTypeObject FrameBatchType;

static void FrameBatch_dealloc(FrameBatchObject *self)
{
    Py_XDECREF(self->buffer);
    Py_XDECREF(self->frame_type);
    Py_XDECREF(self->linktype);
    PyMem_Free(self->records);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t FrameBatch_len(FrameBatchObject *self)
{
    return self->count;
}

static PyObject *FrameBatch_item(FrameBatchObject *self, Py_ssize_t i)
{
    if (i < 0 || i >= self->count) {
        PyErr_SetString(PyExc_IndexError, "frame index out of range");
        return NULL;
    }
    if (bind(self->frame_type) < 0)
        return NULL;
    const BatchRecord *r = &self->records[i];
    PyObject *data = PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->buffer) + r->offset, (Py_ssize_t)r->length);
    if (data == NULL)
        return NULL;
    return make(self->frame_type, r->timestamp_ns, self->linktype, data, r->orig_len);
}

static int FrameBatch_getbuffer(FrameBatchObject *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->records, self->count * (Py_ssize_t)sizeof(BatchRecord), 1,
                             flags);
}

static PyObject *FrameBatch_get_buffer(FrameBatchObject *self, void *closure)
{
    Py_INCREF(self->buffer);
    return self->buffer;
}

static PyObject *FrameBatch_get_linktype(FrameBatchObject *self, void *closure)
{
    Py_INCREF(self->linktype);
    return self->linktype;
}

static PySequenceMethods FrameBatch_as_sequence = {
    .sq_length = (lenfunc)FrameBatch_len,
    .sq_item = (ssizeargfunc)FrameBatch_item,
};

static PyBufferProcs FrameBatch_as_buffer = {
    .bf_getbuffer = (getbufferproc)FrameBatch_getbuffer,
};

static PyGetSetDef FrameBatch_getset[] = {
    {"buffer", (getter)FrameBatch_get_buffer, NULL, "the bytes the frames lie in", NULL},
    {"linktype", (getter)FrameBatch_get_linktype, NULL, "the frames' link type", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrameBatchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bridge.capture._records.FrameBatch",
    .tp_basicsize = sizeof(FrameBatchObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The frames of a capture chunk, made objects only when read (see the source's header); its buffer "
              "is its records (_batch.h).",
    .tp_dealloc = (destructor)FrameBatch_dealloc,
    .tp_as_sequence = &FrameBatch_as_sequence,
    .tp_as_buffer = &FrameBatch_as_buffer,
    .tp_getset = FrameBatch_getset,
};

/* An empty batch over buffer (kept), its frames of type and linktype. */
static FrameBatchObject *new_batch(PyTypeObject *type, PyObject *buffer, int linktype)
{
    FrameBatchObject *batch = PyObject_New(FrameBatchObject, &FrameBatchType);
    if (batch == NULL)
        return NULL;
    Py_INCREF(buffer);
    Py_INCREF(type);
    batch->buffer = buffer;
    batch->frame_type = type;
    batch->linktype = PyLong_FromLong(linktype);
    batch->records = NULL;
    batch->count = batch->capacity = 0;
    if (batch->linktype == NULL) {
        Py_DECREF(batch);
        return NULL;
    }
    return batch;
}

static PyObject *pcap_batch(PyObject *self, PyObject *args)
{
    PyTypeObject *type;
    PyObject *buf_obj;
    Py_ssize_t pos, record_header;
    int little;
    long long frac_mult;
    unsigned long long limit;
    int linktype;
    if (!PyArg_ParseTuple(args, "O!O!npnLKi:pcap_batch", &PyType_Type, &type, &PyBytes_Type, &buf_obj, &pos, &little,
                          &record_header, &frac_mult, &limit, &linktype))
        return NULL;
    if (bind(type) < 0)
        return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(buf_obj);
    Py_ssize_t n = PyBytes_GET_SIZE(buf_obj);
    if (pos < 0 || pos > n || record_header < 16) {
        PyErr_SetString(PyExc_ValueError, "position or record header size out of range");
        return NULL;
    }
    FrameBatchObject *batch = new_batch(type, buf_obj, linktype);
    if (batch == NULL)
        return NULL;
    Py_ssize_t need = record_header;
    long long absurd = -1;
    BatchRecord r;
    while (next_record(p, n, pos, little, record_header, frac_mult, limit, &r, &need, &absurd) == RECORD_OK) {
        if (batch->count == batch->capacity) {
            Py_ssize_t capacity = batch->capacity ? batch->capacity * 2 : 1024;
            BatchRecord *records = PyMem_Realloc(batch->records, (size_t)capacity * sizeof(BatchRecord));
            if (records == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            batch->records = records;
            batch->capacity = capacity;
        }
        batch->records[batch->count++] = r;
        pos = (Py_ssize_t)(r.offset + r.length);
    }
    return Py_BuildValue("(NnnL)", (PyObject *)batch, pos, need, absurd);
fail:
    Py_DECREF(batch);
    return NULL;
}

static PyObject *tpacket_v3(PyObject *self, PyObject *args)
{
    PyTypeObject *type;
    Py_buffer ring;
    Py_ssize_t block, snaplen;
    if (!PyArg_ParseTuple(args, "O!w*nn:tpacket_v3", &PyType_Type, &type, &ring, &block, &snaplen))
        return NULL;
    FrameBatchObject *batch = NULL;
    PyObject *buffer = NULL;
    Py_ssize_t frames, total;
    if (bind(type) < 0)
        goto fail;
    int rc = v3_measure(ring.buf, ring.len, block, snaplen, &frames, &total);
    if (rc != V3_OK) {
        PyErr_SetString(PyExc_ValueError, v3_error(rc));
        goto fail;
    }
    buffer = PyBytes_FromStringAndSize(NULL, total);
    if (buffer == NULL)
        goto fail;
    batch = new_batch(type, buffer, 1); /* LINKTYPE_ETHERNET */
    if (batch == NULL)
        goto fail;
    batch->records = PyMem_Malloc((size_t)(frames ? frames : 1) * sizeof(BatchRecord));
    if (batch->records == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    batch->capacity = batch->count = frames;
    v3_fill(ring.buf, ring.len, block, snaplen, frames, (uint8_t *)PyBytes_AS_STRING(buffer), batch->records);
    Py_DECREF(buffer);
    PyBuffer_Release(&ring);
    return (PyObject *)batch;
fail:
    Py_XDECREF(batch);
    Py_XDECREF(buffer);
    PyBuffer_Release(&ring);
    return NULL;
}

/*
 * pack_pcap(buffer, timestamp_ns, frames, nanosecond, snaplen) -> frame_bytes
 *
 * The pcap records (16-byte header, the frame cut to snaplen) of ``frames`` (a
 * list of bytes, every one stamped ``timestamp_ns``: the frames one event
 * made), little-endian as bridge.capture.pcapwriter writes them, appended to
 * ``buffer`` (a bytearray: the writer's, no copy in between); frame_bytes: the
 * frames' lengths before any cut.
 */
static PyObject *pack_pcap(PyObject *self, PyObject *args)
{
    long long stamp;
    PyObject *buffer, *frames;
    int nanosecond;
    Py_ssize_t snaplen;
    if (!PyArg_ParseTuple(args, "O!LO!pn:pack_pcap", &PyByteArray_Type, &buffer, &stamp, &PyList_Type, &frames,
                          &nanosecond, &snaplen))
        return NULL;
    if (snaplen < 0) {
        PyErr_SetString(PyExc_ValueError, "snaplen must not be negative");
        return NULL;
    }
    if (stamp < 0) {
        PyErr_SetString(PyExc_ValueError, "timestamp_ns must not be negative");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(frames), size = 0;
    unsigned long long total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *data = PyList_GET_ITEM(frames, i);
        if (!PyBytes_Check(data)) {
            PyErr_SetString(PyExc_TypeError, "a frame must be bytes");
            return NULL;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(data);
        total += (unsigned long long)length;
        size += PCAP_RECORD_HEADER + (length > snaplen ? snaplen : length);
    }
    uint8_t *p = pcap_buffer_grow(buffer, size);
    if (p == NULL)
        return NULL;
    uint32_t sec, frac;
    pcap_stamp(stamp, nanosecond, &sec, &frac);
    for (Py_ssize_t i = 0; i < n; i++) { /* the list cannot change: no Python code runs in between */
        PyObject *data = PyList_GET_ITEM(frames, i);
        Py_ssize_t length = PyBytes_GET_SIZE(data);
        Py_ssize_t kept = length > snaplen ? snaplen : length;
        pcap_record_header(p, sec, frac, (uint32_t)kept, (uint32_t)length);
        memcpy(p + PCAP_RECORD_HEADER, PyBytes_AS_STRING(data), (size_t)kept);
        p += PCAP_RECORD_HEADER + kept;
    }
    return PyLong_FromUnsignedLongLong(total);
}

static PyMethodDef methods[] = {
    {"pack_pcap", pack_pcap, METH_VARARGS,
     "pack_pcap(buffer, timestamp_ns, frames, nanosecond, snaplen) -> frame_bytes: the pcap records of frames "
     "(a list of bytes, all stamped timestamp_ns), little-endian, appended to buffer (a bytearray)"},
    {"pcap", pcap, METH_VARARGS,
     "pcap(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)"
     " -> (frames, pos, need, absurd): the complete pcap records of buf from pos on"},
    {"pcap_batch", pcap_batch, METH_VARARGS,
     "pcap_batch(frame_type, buf, pos, little_endian, record_header, frac_mult, limit, linktype)"
     " -> (batch, pos, need, absurd): the same as pcap, the frames as one FrameBatch"},
    {"tpacket_v3", tpacket_v3, METH_VARARGS,
     "tpacket_v3(frame_type, ring, block, snaplen) -> batch: the frames of one TPACKET_V3 ring block, as one "
     "FrameBatch (copied out of the ring in one buffer)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bridge.capture._records",
    .m_doc = "The per-frame loops of the capture readers, in C (see the source's header).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__records(void)
{
    if (PyType_Ready(&FrameBatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FrameBatchType);
    if (PyModule_AddObject(m, "FrameBatch", (PyObject *)&FrameBatchType) < 0) {
        Py_DECREF(&FrameBatchType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
