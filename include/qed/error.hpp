// SPDX-License-Identifier: BSL-1.0
// Error codes of the QED library.
//
// Format and state errors are error codes in the `qed` category;
// operating-system errors keep std::system_category (errno values).
//
// Completion handlers receive boost::system::error_code (as Asio's own do, so
// use_future and use_awaitable throw boost::system::system_error). It holds
// a std::error_code of the `qed` category unchanged, converts to and from
// std::error_code, and compares with qed::errc directly:
// `ec == qed::errc::read_only` holds for either type.
#pragma once

#include <boost/system/error_code.hpp>
#include <boost/system/is_error_code_enum.hpp>
#include <string>
#include <system_error>

namespace qed {

/// Errors detected by the library itself (everything that is not an errno).
enum class errc {
    // --- header validation -------------------------------------------------
    bad_magic = 1,              ///< first four bytes are not "QED\0"
    file_too_small,             ///< file shorter than the 64-byte header
    unknown_features,           ///< incompatible feature bits we don't know
    invalid_cluster_size,       ///< not a power of two in [4 KiB, 64 MiB]
    invalid_table_size,         ///< not a power of two in [1, 16]
    invalid_header_size,        ///< header_size zero or overflowing
    image_size_unaligned,       ///< image_size not a multiple of 512
    image_too_large,            ///< image_size beyond what L1 can address
    invalid_l1_offset,          ///< misaligned or inside the header
    l1_table_past_eof,          ///< L1 table runs past the end of the file
    backing_name_out_of_range,  ///< backing name outside the header clusters
    bad_backing_name,           ///< backing name empty or containing a NUL byte
    // --- table contents ----------------------------------------------------
    invalid_l2_offset,       ///< L1 entry misaligned / in header / past EOF
    invalid_cluster_offset,  ///< L2 entry misaligned / in header / past EOF
    corrupt_image,           ///< check found corruption it cannot repair
    // --- backing chain -----------------------------------------------------
    backing_chain_too_deep,  ///< more backing levels than allowed
    backing_loop,            ///< a backing file refers back into the chain
    backing_not_allowed,     ///< backing path outside the allowed directory
    backing_name_too_long,   ///< name does not fit in the header clusters
    backing_file_missing,    ///< image needs a backing file that wasn't opened
    unknown_format,          ///< format name not "qed" or "raw"
    // --- requests and state ------------------------------------------------
    unaligned_request,            ///< offset or length not a multiple of 512
    out_of_range,                 ///< request reaches past the end of the image
    read_only,                    ///< write on an image opened read-only
    closed,                       ///< operation on a closed image
    shrink_not_supported,         ///< resize to a smaller size
    not_supported,                ///< operation the format cannot do
    unsupported_compat_features,  ///< header rewrite refused: unknown compat bits
    invalid_argument,             ///< bad option value (sizes, names)
    image_locked,                 ///< another process holds a conflicting image lock
    not_a_regular_file,           ///< image or backing file is a FIFO, socket, character device...
};

/// The `qed` error category.
const std::error_category& category() noexcept;

inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), category()};
}

}  // namespace qed

/// \cond
template <>
struct std::is_error_code_enum<qed::errc> : std::true_type {};
// Lets `boost_ec = qed::errc::x` assign, as construction and comparison
// already do through std::is_error_code_enum (Boost.System 1.81).
template <>
struct boost::system::is_error_code_enum<qed::errc> : std::true_type {};
/// \endcond
