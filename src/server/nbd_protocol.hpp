// SPDX-License-Identifier: BSL-1.0
// The NBD wire protocol: constants, big-endian field access, and the fixed
// layouts of the messages qed-nbd reads and writes.
//
// Values are those of the NBD protocol document (doc/proto.md in the nbd
// project), as qemu-nbd and nbdkit implement it. Everything on the wire is
// big-endian. Nothing here does I/O.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <system_error>

namespace qed::nbd {

// ---- magics ------------------------------------------------------------------
inline constexpr std::uint64_t init_magic = 0x4e42444d41474943;  ///< "NBDMAGIC"
inline constexpr std::uint64_t opts_magic = 0x49484156454f5054;  ///< "IHAVEOPT"
inline constexpr std::uint64_t rep_magic = 0x0003e889045565a9;   ///< option replies
inline constexpr std::uint32_t request_magic = 0x25609513;
inline constexpr std::uint32_t simple_reply_magic = 0x67446698;
inline constexpr std::uint32_t structured_reply_magic = 0x668e33ef;

// ---- handshake flags (server, 16 bits) and client flags (32 bits) -------------
inline constexpr std::uint16_t flag_fixed_newstyle = 1u << 0;
inline constexpr std::uint16_t flag_no_zeroes = 1u << 1;
inline constexpr std::uint32_t flag_c_fixed_newstyle = 1u << 0;
inline constexpr std::uint32_t flag_c_no_zeroes = 1u << 1;

// ---- transmission flags (16 bits) ---------------------------------------------
inline constexpr std::uint16_t flag_has_flags = 1u << 0;
inline constexpr std::uint16_t flag_read_only = 1u << 1;
inline constexpr std::uint16_t flag_send_flush = 1u << 2;
inline constexpr std::uint16_t flag_send_fua = 1u << 3;
inline constexpr std::uint16_t flag_rotational = 1u << 4;
inline constexpr std::uint16_t flag_send_trim = 1u << 5;
inline constexpr std::uint16_t flag_send_write_zeroes = 1u << 6;
inline constexpr std::uint16_t flag_send_df = 1u << 7;
inline constexpr std::uint16_t flag_can_multi_conn = 1u << 8;
inline constexpr std::uint16_t flag_send_resize = 1u << 9;
inline constexpr std::uint16_t flag_send_cache = 1u << 10;
inline constexpr std::uint16_t flag_send_fast_zero = 1u << 11;

// ---- options -----------------------------------------------------------------
inline constexpr std::uint32_t opt_export_name = 1;
inline constexpr std::uint32_t opt_abort = 2;
inline constexpr std::uint32_t opt_list = 3;
inline constexpr std::uint32_t opt_peek_export = 4;  // withdrawn
inline constexpr std::uint32_t opt_starttls = 5;
inline constexpr std::uint32_t opt_info = 6;
inline constexpr std::uint32_t opt_go = 7;
inline constexpr std::uint32_t opt_structured_reply = 8;
inline constexpr std::uint32_t opt_list_meta_context = 9;
inline constexpr std::uint32_t opt_set_meta_context = 10;
inline constexpr std::uint32_t opt_extended_headers = 11;

// ---- option reply types --------------------------------------------------------
inline constexpr std::uint32_t rep_ack = 1;
inline constexpr std::uint32_t rep_server = 2;
inline constexpr std::uint32_t rep_info = 3;
inline constexpr std::uint32_t rep_meta_context = 4;
inline constexpr std::uint32_t rep_err_bit = 0x80000000u;
inline constexpr std::uint32_t rep_err_unsup = rep_err_bit | 1;
inline constexpr std::uint32_t rep_err_policy = rep_err_bit | 2;
inline constexpr std::uint32_t rep_err_invalid = rep_err_bit | 3;
inline constexpr std::uint32_t rep_err_platform = rep_err_bit | 4;
inline constexpr std::uint32_t rep_err_tls_reqd = rep_err_bit | 5;
inline constexpr std::uint32_t rep_err_unknown = rep_err_bit | 6;
inline constexpr std::uint32_t rep_err_shutdown = rep_err_bit | 7;
inline constexpr std::uint32_t rep_err_block_size_reqd = rep_err_bit | 8;
inline constexpr std::uint32_t rep_err_too_big = rep_err_bit | 9;

// ---- NBD_REP_INFO types ---------------------------------------------------------
inline constexpr std::uint16_t info_export = 0;
inline constexpr std::uint16_t info_name = 1;
inline constexpr std::uint16_t info_description = 2;
inline constexpr std::uint16_t info_block_size = 3;

// ---- commands and command flags ------------------------------------------------
inline constexpr std::uint16_t cmd_read = 0;
inline constexpr std::uint16_t cmd_write = 1;
inline constexpr std::uint16_t cmd_disc = 2;
inline constexpr std::uint16_t cmd_flush = 3;
inline constexpr std::uint16_t cmd_trim = 4;
inline constexpr std::uint16_t cmd_cache = 5;
inline constexpr std::uint16_t cmd_write_zeroes = 6;
inline constexpr std::uint16_t cmd_block_status = 7;
inline constexpr std::uint16_t cmd_resize = 8;

inline constexpr std::uint16_t cmd_flag_fua = 1u << 0;
inline constexpr std::uint16_t cmd_flag_no_hole = 1u << 1;
inline constexpr std::uint16_t cmd_flag_df = 1u << 2;
inline constexpr std::uint16_t cmd_flag_req_one = 1u << 3;
inline constexpr std::uint16_t cmd_flag_fast_zero = 1u << 4;

// ---- structured replies ---------------------------------------------------------
inline constexpr std::uint16_t reply_flag_done = 1u << 0;
inline constexpr std::uint16_t reply_type_none = 0;
inline constexpr std::uint16_t reply_type_offset_data = 1;
inline constexpr std::uint16_t reply_type_offset_hole = 2;
inline constexpr std::uint16_t reply_type_block_status = 5;
inline constexpr std::uint16_t reply_type_error = (1u << 15) | 1;
inline constexpr std::uint16_t reply_type_error_offset = (1u << 15) | 2;

// ---- errors (the protocol's own values, which match Linux errno) ----------------
inline constexpr std::uint32_t err_perm = 1;
inline constexpr std::uint32_t err_io = 5;
inline constexpr std::uint32_t err_nomem = 12;
inline constexpr std::uint32_t err_inval = 22;
inline constexpr std::uint32_t err_nospc = 28;
inline constexpr std::uint32_t err_overflow = 75;
inline constexpr std::uint32_t err_notsup = 95;
inline constexpr std::uint32_t err_shutdown = 108;

// ---- base:allocation status flags and context names -------------------------------
inline constexpr std::uint32_t state_hole = 1u << 0;
inline constexpr std::uint32_t state_zero = 1u << 1;
inline constexpr std::string_view context_base_allocation = "base:allocation";
/// qemu's extension: 0 unallocated, 1 this image, 2+ that backing level + 1.
inline constexpr std::string_view context_allocation_depth = "qemu:allocation-depth";

// ---- sizes ---------------------------------------------------------------------------
inline constexpr std::size_t greeting_size = 18;       ///< NBDMAGIC, IHAVEOPT, handshake flags
inline constexpr std::size_t option_header_size = 16;  ///< IHAVEOPT, option, length
inline constexpr std::size_t option_reply_header_size = 20;
inline constexpr std::size_t request_size = 28;
inline constexpr std::size_t simple_reply_size = 16;
inline constexpr std::size_t structured_header_size = 20;
inline constexpr std::size_t max_string = 4096;  ///< names, queries, messages

// ---- big-endian fields -----------------------------------------------------------------
inline void put16(std::byte* p, std::uint16_t v) noexcept {
    p[0] = std::byte(v >> 8);
    p[1] = std::byte(v);
}
inline void put32(std::byte* p, std::uint32_t v) noexcept {
    put16(p, std::uint16_t(v >> 16));
    put16(p + 2, std::uint16_t(v));
}
inline void put64(std::byte* p, std::uint64_t v) noexcept {
    put32(p, std::uint32_t(v >> 32));
    put32(p + 4, std::uint32_t(v));
}
inline std::uint16_t get16(const std::byte* p) noexcept {
    return std::uint16_t((std::to_integer<unsigned>(p[0]) << 8) | std::to_integer<unsigned>(p[1]));
}
inline std::uint32_t get32(const std::byte* p) noexcept {
    return (std::uint32_t(get16(p)) << 16) | get16(p + 2);
}
inline std::uint64_t get64(const std::byte* p) noexcept {
    return (std::uint64_t(get32(p)) << 32) | get32(p + 4);
}

/// A transmission-phase request header.
struct request {
    std::uint32_t magic = 0;
    std::uint16_t flags = 0;
    std::uint16_t type = 0;
    std::uint64_t cookie = 0;  ///< "handle" in older versions of the document
    std::uint64_t offset = 0;
    std::uint32_t length = 0;
};

inline request decode_request(const std::byte* p) noexcept {
    request r;
    r.magic = get32(p);
    r.flags = get16(p + 4);
    r.type = get16(p + 6);
    r.cookie = get64(p + 8);
    r.offset = get64(p + 16);
    r.length = get32(p + 24);
    return r;
}

inline void encode_request(std::byte* p, const request& r) noexcept {
    put32(p, r.magic);
    put16(p + 4, r.flags);
    put16(p + 6, r.type);
    put64(p + 8, r.cookie);
    put64(p + 16, r.offset);
    put32(p + 24, r.length);
}

inline void encode_simple_reply(std::byte* p, std::uint32_t error, std::uint64_t cookie) noexcept {
    put32(p, simple_reply_magic);
    put32(p + 4, error);
    put64(p + 8, cookie);
}

inline void encode_structured_header(std::byte* p, std::uint16_t flags, std::uint16_t type, std::uint64_t cookie,
                                     std::uint32_t length) noexcept {
    put32(p, structured_reply_magic);
    put16(p + 4, flags);
    put16(p + 6, type);
    put64(p + 8, cookie);
    put32(p + 16, length);
}

inline void encode_option_reply_header(std::byte* p, std::uint32_t option, std::uint32_t type,
                                       std::uint32_t length) noexcept {
    put64(p, rep_magic);
    put32(p + 8, option);
    put32(p + 12, type);
    put32(p + 16, length);
}

/// The NBD error value for a failed request (EIO for anything without a
/// closer match). `writing` selects ENOSPC for requests past the end.
std::uint32_t to_nbd_error(const std::error_code& ec, bool writing) noexcept;

/// Short names for diagnostics.
std::string_view command_name(std::uint16_t type) noexcept;
std::string_view option_name(std::uint32_t option) noexcept;

}  // namespace qed::nbd
