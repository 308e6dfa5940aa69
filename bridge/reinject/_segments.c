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
 *   segments(eth_send, eth_recv, src, dst, sport, dport, seq, peer, mss, data,
 *            ip_id, ack_each) -> (frames, seq, ip_id)
 *       ``data`` cut into segments of at most ``mss`` bytes sent from src to
 *       dst (ACK, PSH|ACK on the last), each followed by the peer's pure ACK
 *       when ``ack_each``, else one ACK after the last (delayed ACK, as real
 *       receivers do): ``frames`` a list of bytes; the sender's next sequence
 *       number and the next IPv4 identification are returned.
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

#define F_ACK 0x10
#define F_PSH 0x08

static PyObject *py_segments(PyObject *self, PyObject *args)
{
    Py_buffer eth_send, eth_recv, src, dst, data;
    unsigned sport, dport, ip_id;
    unsigned long seq, peer;
    Py_ssize_t mss;
    int ack_each;
    if (!PyArg_ParseTuple(args, "y*y*y*y*IIkkny*Ip:segments", &eth_send, &eth_recv, &src, &dst, &sport, &dport, &seq,
                          &peer, &mss, &data, &ip_id, &ack_each))
        return NULL;
    PyObject *frames = NULL, *result = NULL;
    Endpoints send, recv;
    if (endpoints(&send, &eth_send, &src, &dst, sport, dport) < 0 ||
        endpoints(&recv, &eth_recv, &dst, &src, dport, sport) < 0)
        goto done;
    if (mss < 1 || mss > 65535 - TCP_HEADER - (send.addr_len == 4 ? IP4_HEADER : 0)) {
        PyErr_SetString(PyExc_ValueError, "mss out of range");
        goto done;
    }
    Py_ssize_t pieces = (data.len + mss - 1) / mss;
    frames = PyList_New(0);
    if (frames == NULL)
        goto done;
    ip_id &= 0xFFFF;
    uint32_t s = (uint32_t)seq, pr = (uint32_t)peer;
    const uint8_t *p = data.buf;
    for (Py_ssize_t i = 0; i < pieces; i++) {
        Py_ssize_t start = i * mss;
        Py_ssize_t length = data.len - start < mss ? data.len - start : mss;
        int last = i == pieces - 1;
        PyObject *f = build(&send, s, pr, last ? (F_ACK | F_PSH) : F_ACK, p + start, length, &ip_id);
        if (f == NULL || PyList_Append(frames, f) < 0) {
            Py_XDECREF(f);
            goto done;
        }
        Py_DECREF(f);
        s += (uint32_t)length;
        if (ack_each || last) {
            f = build(&recv, pr, s, F_ACK, NULL, 0, &ip_id);
            if (f == NULL || PyList_Append(frames, f) < 0) {
                Py_XDECREF(f);
                goto done;
            }
            Py_DECREF(f);
        }
    }
    result = Py_BuildValue("(Okk)", frames, (unsigned long)s, (unsigned long)ip_id);
done:
    Py_XDECREF(frames);
    PyBuffer_Release(&eth_send);
    PyBuffer_Release(&eth_recv);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"checksum", py_checksum, METH_VARARGS, "checksum(data, initial=0) -> int: the RFC 1071 checksum field of data"},
    {"frame", py_frame, METH_VARARGS,
     "frame(eth, src, dst, sport, dport, seq, ack, flags, payload, ip_id) -> bytes: one Ethernet/IP/TCP frame"},
    {"segments", py_segments, METH_VARARGS,
     "segments(eth_send, eth_recv, src, dst, sport, dport, seq, peer, mss, data, ip_id, ack_each)"
     " -> (frames, seq, ip_id): data as MSS-sized segments and the peer's ACKs"},
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
