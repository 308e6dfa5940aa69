/*
 * bridge.reinject._segments: the per-byte work of synthetic frame building.
 *
 * Building a synthetic cleartext TCP segment is a few header words and one
 * Internet checksum (RFC 1071) over the payload; in Python the checksum is a
 * big-integer sum (about 5 ns a byte) and the headers are a struct.pack each,
 * which made re-injection cost twice the decryption.  Here:
 *
 *   checksum(data, initial=0) -> int
 *       the checksum field value of data (odd lengths padded with a zero byte),
 *       ``initial`` being a one's-complement partial sum to start from;
 *   frame(eth, src, dst, sport, dport, seq, ack, flags, payload, ip_id) -> bytes
 *       one Ethernet frame: ``eth`` is the link header (MACs, optional 802.1Q
 *       tag, EtherType), the addresses' length (4 or 16) chooses IPv4 or IPv6;
 *   segments(eth_send, eth_recv, src, dst, sport, dport, seq, peer, mss, pieces,
 *            ip_id, ack_each) -> (frames, seq, ip_id)
 *       each of ``pieces`` (a sequence of bytes-like objects: the plaintexts of
 *       consecutive events of one direction) in turn cut into segments of at
 *       most ``mss`` bytes sent from src to dst (ACK, PSH|ACK on a piece's last),
 *       each followed by the peer's pure ACK when ``ack_each``, else one ACK
 *       after a piece's last (delayed ACK, as real receivers do): ``frames`` a
 *       list of bytes; the sender's next sequence number and the next IPv4
 *       identification are returned;
 *   segments_pcap(buffer, stamps, nanosecond, snaplen, <segments' arguments>)
 *       the same frames as pcap records appended to a bytearray, each piece's
 *       stamped with its time in ``stamps``.
 *
 * Header layout and values are those of bridge/reinject/synthetic.py's
 * docstring: IPv4 with DF, TTL 64, no options; IPv6 without extension headers,
 * hop limit 64; TCP without options, window 65535.  Pure functions over bytes:
 * no state, no allocation beyond the returned objects; what they do per frame
 * and byte is the pure C core _segments_core.h (fuzzed: fuzz/fuzz_segments.c).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "../capture/_pcap_record.h"
#include "_segments_core.h"

/* One frame into a new bytes object; ip_id advances for IPv4. */
static PyObject *build(const Endpoints *e, uint32_t seq, uint32_t ack, unsigned flags,
                       const uint8_t *payload, Py_ssize_t length, unsigned *ip_id)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, frame_size(e, length));
    if (out != NULL)
        write_frame((uint8_t *)PyBytes_AS_STRING(out), e, seq, ack, flags, payload, length, ip_id);
    return out;
}

/* Parse the shared endpoint arguments; buffers stay valid while the caller
   holds the Py_buffer views. */
static int endpoints(Endpoints *e, Py_buffer *eth, Py_buffer *src, Py_buffer *dst, unsigned sport, unsigned dport)
{
    int rc = endpoints_init(e, eth->buf, eth->len, src->buf, dst->buf, src->len, dst->len, sport, dport);
    if (rc < 0) {
        PyErr_SetString(PyExc_ValueError, endpoints_error(rc));
        return -1;
    }
    return 0;
}

static PyObject *py_checksum(PyObject *self, PyObject *args)
{
    Py_buffer data;
    unsigned long long initial = 0;
    if (!PyArg_ParseTuple(args, "y*|K:checksum", &data, &initial))
        return NULL;
    uint64_t sum = sum_words(data.buf, data.len, initial & 0xFFFFFFFFULL);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(fold(sum));
}

static PyObject *py_frame(PyObject *self, PyObject *args)
{
    Py_buffer eth, src, dst, payload;
    unsigned sport, dport, flags, ip_id;
    unsigned long seq, ack;
    if (!PyArg_ParseTuple(args, "y*y*y*IIkkIy*I:frame", &eth, &src, &dst, &sport, &dport, &seq, &ack, &flags,
                          &payload, &ip_id))
        return NULL;
    PyObject *out = NULL;
    Endpoints e;
    if (endpoints(&e, &eth, &src, &dst, sport, dport) == 0) {
        if (payload.len > 65535 - TCP_HEADER - (e.addr_len == 4 ? IP4_HEADER : 0)) {
            PyErr_SetString(PyExc_ValueError, "payload too long for one IP packet");
        } else if (flags > 0xFF) {
            PyErr_SetString(PyExc_ValueError, "TCP flags out of range");
        } else {
            ip_id &= 0xFFFF;
            out = build(&e, (uint32_t)seq, (uint32_t)ack, flags, payload.buf, payload.len, &ip_id);
        }
    }
    PyBuffer_Release(&eth);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&payload);
    return out;
}

/* The pieces of segments() and segments_pcap(): a sequence of bytes-like objects, held as buffers. */
typedef struct {
    Py_buffer *views;
    Py_ssize_t count;
} Pieces;

static void pieces_release(Pieces *p)
{
    for (Py_ssize_t i = 0; i < p->count; i++)
        PyBuffer_Release(&p->views[i]);
    PyMem_Free(p->views);
    p->views = NULL, p->count = 0;
}

static int pieces_get(PyObject *sequence, Pieces *p)
{
    p->views = NULL, p->count = 0;
    PyObject *fast = PySequence_Fast(sequence, "pieces must be a sequence of bytes-like objects");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    p->views = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    if (p->views == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(items[i], &p->views[i], PyBUF_SIMPLE) < 0) {
            Py_DECREF(fast);
            pieces_release(p);
            return -1;
        }
        p->count++;
    }
    Py_DECREF(fast);
    return 0;
}

/* The buffers segments() and segments_pcap() parse (the first four: y*) and hold. */
typedef struct {
    Py_buffer eth_send, eth_recv, src, dst;
    Pieces pieces;
} SegmentViews;

/* Both directions' endpoints, their mss checked, and the pieces taken (v's four
 * buffers parsed; whatever happens, segment_views_release(v) after). */
static int segment_views_open(SegmentViews *v, Endpoints *send, Endpoints *recv, unsigned sport, unsigned dport,
                              Py_ssize_t mss, PyObject *pieces)
{
    v->pieces.views = NULL, v->pieces.count = 0;
    if (endpoints(send, &v->eth_send, &v->src, &v->dst, sport, dport) < 0 ||
        endpoints(recv, &v->eth_recv, &v->dst, &v->src, dport, sport) < 0)
        return -1;
    if (!mss_fits(send, mss)) {
        PyErr_SetString(PyExc_ValueError, "mss out of range");
        return -1;
    }
    return pieces_get(pieces, &v->pieces);
}

static void segment_views_release(SegmentViews *v)
{
    pieces_release(&v->pieces);
    PyBuffer_Release(&v->eth_send);
    PyBuffer_Release(&v->eth_recv);
    PyBuffer_Release(&v->src);
    PyBuffer_Release(&v->dst);
}

static PyObject *py_segments(PyObject *self, PyObject *args)
{
    SegmentViews v;
    PyObject *sequence;
    unsigned sport, dport, ip_id;
    unsigned long seq, peer;
    Py_ssize_t mss;
    int ack_each;
    if (!PyArg_ParseTuple(args, "y*y*y*y*IIkknOIp:segments", &v.eth_send, &v.eth_recv, &v.src, &v.dst, &sport, &dport,
                          &seq, &peer, &mss, &sequence, &ip_id, &ack_each))
        return NULL;
    PyObject *frames = NULL, *result = NULL;
    Pieces *pieces = &v.pieces;
    Endpoints send, recv;
    if (segment_views_open(&v, &send, &recv, sport, dport, mss, sequence) < 0)
        goto done;
    frames = PyList_New(0);
    if (frames == NULL)
        goto done;
    ip_id &= 0xFFFF;
    SegmentWalk w;
    SegmentFrame f;
    uint32_t next = (uint32_t)seq;
    for (Py_ssize_t i = 0; i < pieces->count; i++) {
        walk_init(&w, &send, &recv, pieces->views[i].buf, pieces->views[i].len, mss, ack_each, next, (uint32_t)peer);
        while (walk_next(&w, &f)) {
            PyObject *frame = build(f.e, f.seq, f.ack, f.flags, f.payload, f.length, &ip_id);
            if (frame == NULL || PyList_Append(frames, frame) < 0) {
                Py_XDECREF(frame);
                goto done;
            }
            Py_DECREF(frame);
        }
        next = w.seq;
    }
    result = Py_BuildValue("(Okk)", frames, (unsigned long)next, (unsigned long)ip_id);
done:
    Py_XDECREF(frames);
    segment_views_release(&v);
    return result;
}

/*
 * segments_pcap(buffer, stamps, nanosecond, snaplen, <the arguments of segments>)
 *     -> (frames, seq, ip_id, frame_bytes)
 *
 * The frames segments() makes, as pcap records (bridge/capture/_pcap_record.h,
 * each piece's frames stamped with its time in stamps, a sequence of nanosecond
 * times as long as pieces; each frame cut to snaplen) appended to buffer (a
 * bytearray: a pcap writer's), built where they lie: no object per frame and no
 * copy in between.  frames: how many; frame_bytes: their lengths before any cut.
 */
static PyObject *py_segments_pcap(PyObject *self, PyObject *args)
{
    PyObject *buffer, *sequence, *stamps;
    int nanosecond, ack_each;
    Py_ssize_t snaplen, mss;
    SegmentViews v;
    unsigned sport, dport, ip_id;
    unsigned long seq, peer;
    if (!PyArg_ParseTuple(args, "O!Opny*y*y*y*IIkknOIp:segments_pcap", &PyByteArray_Type, &buffer, &stamps,
                          &nanosecond, &snaplen, &v.eth_send, &v.eth_recv, &v.src, &v.dst, &sport, &dport, &seq, &peer,
                          &mss, &sequence, &ip_id, &ack_each))
        return NULL;
    PyObject *result = NULL, *times = NULL;
    Pieces *pieces = &v.pieces;
    long long *when = NULL; /* the stamps */
    uint8_t *cut = NULL; /* a frame longer than snaplen is built here first */
    Endpoints send, recv;
    if (segment_views_open(&v, &send, &recv, sport, dport, mss, sequence) < 0)
        goto done;
    times = PySequence_Fast(stamps, "stamps must be a sequence of ints");
    if (times == NULL)
        goto done;
    if (PySequence_Fast_GET_SIZE(times) != pieces->count) {
        PyErr_SetString(PyExc_ValueError, "stamps and pieces differ in length");
        goto done;
    }
    if (snaplen < 0) {
        PyErr_SetString(PyExc_ValueError, "snaplen must not be negative");
        goto done;
    }
    /* read once, into C: converting an item may run Python code that changes the sequence */
    when = PyMem_Malloc(sizeof(long long) * (size_t)(pieces->count ? pieces->count : 1));
    if (when == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < pieces->count; i++) {
        if (i >= PySequence_Fast_GET_SIZE(times)) {
            PyErr_SetString(PyExc_ValueError, "stamps and pieces differ in length");
            goto done;
        }
        long long stamp = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(times, i));
        if (stamp == -1 && PyErr_Occurred())
            goto done;
        if (stamp < 0) {
            PyErr_SetString(PyExc_ValueError, "timestamps must not be negative");
            goto done;
        }
        when[i] = stamp;
    }
    SegmentWalk w;
    SegmentFrame f;
    Py_ssize_t count = 0, size = 0;
    unsigned long long total = 0;
    uint32_t next = (uint32_t)seq;
    for (Py_ssize_t i = 0; i < pieces->count; i++) {
        walk_init(&w, &send, &recv, pieces->views[i].buf, pieces->views[i].len, mss, ack_each, next, (uint32_t)peer);
        while (walk_next(&w, &f)) {
            Py_ssize_t frame = frame_size(f.e, f.length), record = PCAP_RECORD_HEADER + (frame > snaplen ? snaplen : frame);
            if (record > PY_SSIZE_T_MAX - size) {
                PyErr_NoMemory();
                goto done;
            }
            total += (unsigned long long)frame;
            size += record;
            count++;
        }
        next = w.seq;
    }
    uint8_t *p = pcap_buffer_grow(buffer, size);
    if (p == NULL)
        goto done;
    Py_ssize_t longest = frame_size(&send, mss) > frame_size(&recv, 0) ? frame_size(&send, mss) : frame_size(&recv, 0);
    if (longest > snaplen && (cut = PyMem_Malloc((size_t)longest)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ip_id &= 0xFFFF;
    next = (uint32_t)seq;
    for (Py_ssize_t i = 0; i < pieces->count; i++) {
        uint32_t sec, frac;
        pcap_stamp(when[i], nanosecond, &sec, &frac);
        walk_init(&w, &send, &recv, pieces->views[i].buf, pieces->views[i].len, mss, ack_each, next, (uint32_t)peer);
        while (walk_next(&w, &f)) {
            Py_ssize_t frame = frame_size(f.e, f.length), kept = frame > snaplen ? snaplen : frame;
            uint8_t *at = frame > snaplen ? cut : p + PCAP_RECORD_HEADER;
            write_frame(at, f.e, f.seq, f.ack, f.flags, f.payload, f.length, &ip_id);
            if (at == cut)
                memcpy(p + PCAP_RECORD_HEADER, cut, (size_t)kept);
            pcap_record_header(p, sec, frac, (uint32_t)kept, (uint32_t)frame);
            p += PCAP_RECORD_HEADER + kept;
        }
        next = w.seq;
    }
    result = Py_BuildValue("(nkkK)", count, (unsigned long)next, (unsigned long)ip_id, total);
done:
    PyMem_Free(cut);
    PyMem_Free(when);
    Py_XDECREF(times);
    segment_views_release(&v);
    return result;
}

static PyMethodDef methods[] = {
    {"checksum", py_checksum, METH_VARARGS, "checksum(data, initial=0) -> int: the RFC 1071 checksum field of data"},
    {"frame", py_frame, METH_VARARGS,
     "frame(eth, src, dst, sport, dport, seq, ack, flags, payload, ip_id) -> bytes: one Ethernet/IP/TCP frame"},
    {"segments", py_segments, METH_VARARGS,
     "segments(eth_send, eth_recv, src, dst, sport, dport, seq, peer, mss, pieces, ip_id, ack_each)"
     " -> (frames, seq, ip_id): each of pieces (bytes-like) in turn as MSS-sized segments and the peer's ACKs"},
    {"segments_pcap", py_segments_pcap, METH_VARARGS,
     "segments_pcap(buffer, stamps, nanosecond, snaplen, eth_send, eth_recv, src, dst, sport, dport, seq, "
     "peer, mss, pieces, ip_id, ack_each) -> (frames, seq, ip_id, frame_bytes): the frames of segments() as pcap "
     "records appended to buffer (a bytearray), built in place, each piece's stamped with its time in stamps"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bridge.reinject._segments",
    .m_doc = "Synthetic TCP frames and Internet checksums, in C (see the source's header).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__segments(void)
{
    return PyModule_Create(&module);
}
