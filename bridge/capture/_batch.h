/*
 * A FrameBatch's records (bridge.capture._records.FrameBatch): where each frame
 * of a capture chunk lies in the chunk's bytes.  The batch exposes this array
 * through the buffer protocol, so that the compiled engine
 * (bridge/engine/_lanes.c) reads the frames in place, with no Frame object made.
 */
#ifndef BRIDGE_BATCH_H
#define BRIDGE_BATCH_H

#include <stdint.h>

typedef struct {
    int64_t timestamp_ns;
    uint64_t offset; /* in the batch's buffer */
    uint32_t length; /* captured */
    uint32_t orig_len;
} BatchRecord;

#endif
