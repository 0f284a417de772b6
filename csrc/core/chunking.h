// How the CUDA kernels split the (B, D) elements into chunks (docs/kernels.md, "Work split").
// Host and device, so the partition is unit-tested on the CPU (csrc/tests/test_core.cpp).
#pragma once

#include "common.h"
#include "intdiv.h"

namespace adt_fast {

// Elements per lane: the default split's (benchmarks/sass_report.py divides its count by this),
// and the small-call split's, which gives a call too small to fill a GPU twice the lanes
// (docs/kernels.md, "Work split").
constexpr int kElementsPerThread = 8;
constexpr int kElementsPerThreadSmallCalls = 4;

// A chunk: up to per_lane * lanes consecutive elements of one example, handled by a group of
// `lanes` lanes of a warp, lane j of the group taking elements start + j + lanes * i.
struct Chunk {
  int64_t example, index, start;  // index: the chunk's place in its example
  int len;                        // 0 for a group past the last chunk
};

// Groups are 32 lanes for examples of per_lane * 32 elements or more, and narrower for smaller
// examples (down to one lane per example), so that no lane idles on a small example.
struct Chunking {
  int64_t dim = 0, per_example = 0, count = 0;  // chunks per example, chunks in all
  int per_lane = kElementsPerThread;  // elements per lane of a chunk
  int lanes_log2 = 0;  // a chunk's group has 2^lanes_log2 lanes
  FastDivider fast;  // c / per_example when every chunk index fits 31 bits
  bool narrow = true;

  static Chunking of(int64_t batch, int64_t dim, int per_lane = kElementsPerThread) {
    Chunking c;
    c.dim = dim;
    c.per_lane = per_lane;
    while (c.lanes_log2 < 5 && (int64_t{per_lane} << c.lanes_log2) < dim) ++c.lanes_log2;
    c.per_example = dim > 0 ? (dim + c.size() - 1) / c.size() : 0;
    c.count = batch * c.per_example;
    c.narrow = c.count < (int64_t{1} << 31);
    if (c.narrow && c.per_example > 0) c.fast = FastDivider(static_cast<uint32_t>(c.per_example));
    return c;
  }

  ADT_FN int lanes() const { return 1 << lanes_log2; }
  ADT_FN int size() const { return per_lane << lanes_log2; }  // elements per chunk
  ADT_FN int per_warp() const { return 32 >> lanes_log2; }

  // Chunk c (empty past the last one).
  ADT_FN Chunk operator()(int64_t c) const {
    if (c >= count) return Chunk{0, 0, 0, 0};
    const int64_t b = narrow ? static_cast<int64_t>(fast.div(static_cast<uint32_t>(c))) : c / per_example;
    const int64_t j = c - b * per_example;
    const int64_t left = dim - j * size();
    return Chunk{b, j, b * dim + j * size(), static_cast<int>(left < size() ? left : size())};
  }

  // The chunk of `lane` of a warp whose first chunk is `first`, and the lane's place in its group.
  ADT_FN Chunk of_lane(int64_t first, int lane, int& lane_in_group) const {
    lane_in_group = lane & (lanes() - 1);
    return (*this)(first + (lane >> lanes_log2));
  }
};

}  // namespace adt_fast
