// SPDX-License-Identifier: BSL-1.0
#include "qed/error.hpp"

namespace qed {
namespace {

class qed_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "qed"; }

    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::bad_magic:
                return "not a QED image (bad magic)";
            case errc::file_too_small:
                return "file is too small to hold a QED header";
            case errc::unknown_features:
                return "image uses unsupported QED feature bits";
            case errc::invalid_cluster_size:
                return "invalid cluster size (must be a power of two from 4 KiB to 64 MiB)";
            case errc::invalid_table_size:
                return "invalid table size (must be a power of two from 1 to 16 clusters)";
            case errc::invalid_header_size:
                return "invalid header size";
            case errc::image_size_unaligned:
                return "image size is not a multiple of 512 bytes";
            case errc::image_too_large:
                return "image size exceeds the maximum for this cluster and table size";
            case errc::invalid_l1_offset:
                return "L1 table offset is misaligned or inside the header";
            case errc::l1_table_past_eof:
                return "L1 table runs past the end of the file";
            case errc::backing_name_out_of_range:
                return "backing file name lies outside the header clusters";
            case errc::bad_backing_name:
                return "backing file name is empty or contains a NUL byte";
            case errc::invalid_l2_offset:
                return "L1 entry holds an invalid L2 table offset (image is corrupt)";
            case errc::invalid_cluster_offset:
                return "L2 entry holds an invalid data cluster offset (image is corrupt)";
            case errc::corrupt_image:
                return "image has corruption that cannot be repaired";
            case errc::backing_chain_too_deep:
                return "backing chain is too deep";
            case errc::backing_loop:
                return "backing chain loops back on itself";
            case errc::backing_not_allowed:
                return "backing file lies outside the allowed directory";
            case errc::backing_name_too_long:
                return "backing file name does not fit in the header";
            case errc::backing_file_missing:
                return "image has a backing file that is not open";
            case errc::unknown_format:
                return "unknown image format (expected qed or raw)";
            case errc::unaligned_request:
                return "request offset or length is not a multiple of 512 bytes";
            case errc::out_of_range:
                return "request reaches past the end of the image";
            case errc::read_only:
                return "image is open read-only";
            case errc::closed:
                return "image is closed";
            case errc::shrink_not_supported:
                return "QED images can only grow, not shrink";
            case errc::not_supported:
                return "operation not supported";
            case errc::unsupported_compat_features:
                return "image uses unknown compat features; header cannot be rewritten";
            case errc::invalid_argument:
                return "invalid argument";
            case errc::image_locked:
                return "image is locked by another process";
            case errc::not_a_regular_file:
                return "not a regular file or block device (a FIFO, socket or character device can't hold an image)";
        }
        return "unknown qed error";
    }
};

}  // namespace

const std::error_category& category() noexcept {
    static const qed_category instance;
    return instance;
}

}  // namespace qed
