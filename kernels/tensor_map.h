// Host side of the 2-D TMA tensor copies (tma_load_2d in async_copy.cuh): the tensor map of a
// bf16 matrix (or of bytes: the MLA fp8 cache), the one encoder every kernel family uses (MLA
// prefill and decode, MoE grouped GEMM).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <cstdint>

#include "common.h"

namespace kimi::cuda {

// dim0 contiguous elements of `type`, dim1 rows `stride` bytes apart; boxes of box0 × box_rows
// elements, in the 128-byte swizzle wgmma reads (16-byte piece c of row r at c ^ (r % 8)) or
// unswizzled; boxes past the extent are zero-filled.
inline CUtensorMap tensor_map_2d(CUtensorMapDataType type, const void* base, uint64_t dim0,
                                 uint64_t dim1, uint64_t stride, uint32_t box0, uint32_t box_rows,
                                 bool swizzle) {
  // The driver's encoder, through the runtime (no link against libcuda).
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                cudaEnableDefault, &q));
    KIMI_CHECK(q == cudaDriverEntryPointSuccess && fn, "cuTensorMapEncodeTiled not found");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  KIMI_CHECK(reinterpret_cast<uintptr_t>(base) % 16 == 0 && stride % 16 == 0,
             "tensor map: base and row stride must be 16-byte aligned, stride ", stride);
  CUtensorMap m;
  const cuuint64_t dims[2] = {dim0, dim1}, strides[1] = {stride};
  const cuuint32_t box[2] = {box0, box_rows}, elem[2] = {1, 1};
  const CUresult r = encode(&m, type, 2, const_cast<void*>(base), dims, strides, box, elem,
                            CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  KIMI_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed (", int(r), ") for ", dim0, " x ",
             dim1);
  return m;
}

// A bf16 matrix in boxes of [box_rows][64 elements], 128-byte swizzle (the common case).
inline CUtensorMap tensor_map_2d(const void* base, uint64_t dim0, uint64_t dim1, uint64_t stride,
                                 uint32_t box_rows) {
  return tensor_map_2d(CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, base, dim0, dim1, stride, 64, box_rows,
                       true);
}

}  // namespace kimi::cuda
