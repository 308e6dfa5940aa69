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
 * no state, no allocation beyond the returned objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TTL 64
#define PROTO_TCP 6
#define WINDOW 65535
#define IP4_HEADER 20
#define IP6_HEADER 40
#define TCP_HEADER 20
#define MAX_LINK_HEADER 64

/* One's-complement sum of big-endian 16-bit words, added to sum (not folded).
   The sum is taken in the machine's own byte order, 32 bits at a time into a
   64-bit accumulator (no carry is lost before 2^32 words; the compiler keeps it in
   vector registers), then folded to 16 bits and, on a little-endian machine, its
   bytes swapped: the one's-complement sum does not depend on the byte order
   (RFC 1071, 2.B), and an odd last byte is the low byte of its native word. */
static uint64_t sum_words(const uint8_t *p, Py_ssize_t n, uint64_t sum)
{
    uint64_t native = 0;
    for (; n >= 32; p += 32, n -= 32) {
        uint32_t w[8];
        memcpy(w, p, sizeof w);
        for (int i = 0; i < 8; i++)
            native += w[i];
    }
    for (; n >= 4; p += 4, n -= 4) {
        uint32_t w;
        memcpy(&w, p, 4);
        native += w;
    }
    if (n >= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        native += w;
        p += 2;
        n -= 2;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (n)
        native += p[0];
    while (native >> 16)
        native = (native & 0xFFFF) + (native >> 16);
    return sum + (((native & 0xFF) << 8) | (native >> 8));
#else
    if (n)
        native += (uint32_t)p[0] << 8;
    return sum + native;
#endif
}

static uint16_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

typedef struct {
    const uint8_t *eth;
    Py_ssize_t eth_len;
    const uint8_t *src, *dst;
    Py_ssize_t addr_len; /* 4 or 16 */
    unsigned sport, dport;
    uint64_t addr_sum; /* word sum of both addresses */
} Endpoints;

/* One frame into a new bytes object; ip_id advances for IPv4. */
static PyObject *build(const Endpoints *e, uint32_t seq, uint32_t ack, unsigned flags,
                       const uint8_t *payload, Py_ssize_t length, unsigned *ip_id)
{
    Py_ssize_t ip_header = e->addr_len == 4 ? IP4_HEADER : IP6_HEADER;
    Py_ssize_t tcp_length = TCP_HEADER + length;
    PyObject *out = PyBytes_FromStringAndSize(NULL, e->eth_len + ip_header + tcp_length);
    if (out == NULL)
        return NULL;
    uint8_t *p = (uint8_t *)PyBytes_AS_STRING(out);
    memcpy(p, e->eth, (size_t)e->eth_len);
    uint8_t *ip = p + e->eth_len;
    if (e->addr_len == 4) {
        ip[0] = 0x45;
        ip[1] = 0;
        put16(ip + 2, (uint32_t)(IP4_HEADER + tcp_length));
        put16(ip + 4, *ip_id);
        put16(ip + 6, 0x4000); /* DF */
        ip[8] = TTL;
        ip[9] = PROTO_TCP;
        put16(ip + 10, 0);
        memcpy(ip + 12, e->src, 4);
        memcpy(ip + 16, e->dst, 4);
        put16(ip + 10, fold(sum_words(ip, IP4_HEADER, 0)));
        *ip_id = (*ip_id + 1) & 0xFFFF;
    } else {
        put32(ip, 0x60000000);
        put16(ip + 4, (uint32_t)tcp_length);
        ip[6] = PROTO_TCP;
        ip[7] = TTL;
        memcpy(ip + 8, e->src, 16);
        memcpy(ip + 24, e->dst, 16);
    }
    uint8_t *tcp = ip + ip_header;
    put16(tcp, e->sport);
    put16(tcp + 2, e->dport);
    put32(tcp + 4, seq);
    put32(tcp + 8, ack);
    tcp[12] = 5 << 4;
    tcp[13] = (uint8_t)flags;
    put16(tcp + 14, WINDOW);
    put16(tcp + 16, 0);
    put16(tcp + 18, 0);
    if (length)
        memcpy(tcp + TCP_HEADER, payload, (size_t)length);
    /* pseudo-header (addresses, protocol, TCP length) + header + payload */
    uint64_t sum = e->addr_sum + PROTO_TCP + (uint64_t)tcp_length;
    sum = sum_words(tcp, tcp_length, sum);
    put16(tcp + 16, fold(sum));
    return out;
}

/* Parse the shared endpoint arguments; buffers stay valid while the caller
   holds the Py_buffer views. */
static int endpoints(Endpoints *e, Py_buffer *eth, Py_buffer *src, Py_buffer *dst, unsigned sport, unsigned dport)
{
    if (eth->len > MAX_LINK_HEADER) {
        PyErr_SetString(PyExc_ValueError, "link header longer than 64 bytes");
        return -1;
    }
    if (src->len != dst->len || (src->len != 4 && src->len != 16)) {
        PyErr_SetString(PyExc_ValueError, "addresses must both be 4 (IPv4) or 16 (IPv6) bytes");
        return -1;
    }
    if (sport > 0xFFFF || dport > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    e->eth = eth->buf;
    e->eth_len = eth->len;
    e->src = src->buf;
    e->dst = dst->buf;
    e->addr_len = src->len;
    e->sport = sport;
    e->dport = dport;
    e->addr_sum = sum_words(src->buf, src->len, 0);
    e->addr_sum = sum_words(dst->buf, dst->len, e->addr_sum);
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
        Py_ssize_t ip_header = e.addr_len == 4 ? IP4_HEADER : IP6_HEADER;
        if (payload.len > 65535 - TCP_HEADER - (e.addr_len == 4 ? IP4_HEADER : 0)) {
            PyErr_SetString(PyExc_ValueError, "payload too long for one IP packet");
        } else if (flags > 0xFF) {
            PyErr_SetString(PyExc_ValueError, "TCP flags out of range");
        } else {
            (void)ip_header;
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
