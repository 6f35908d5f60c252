// SPDX-License-Identifier: BSL-1.0
#include "server/nbd_protocol.hpp"

#include <cerrno>

#include "qed/error.hpp"

namespace qed::nbd {

std::uint32_t to_nbd_error(const std::error_code& ec, bool writing) noexcept {
    if (!ec) return 0;
    if (ec.category() == qed::category()) {
        switch (static_cast<qed::errc>(ec.value())) {
            case qed::errc::read_only:
                return err_perm;
            case qed::errc::out_of_range:
                return writing ? err_nospc : err_inval;
            case qed::errc::unaligned_request:
            case qed::errc::invalid_argument:
                return err_inval;
            case qed::errc::not_supported:
                return err_notsup;
            case qed::errc::closed:
                return err_shutdown;
            default:
                return err_io;
        }
    }
    if (ec.category() == std::system_category() || ec.category() == std::generic_category()) {
        switch (ec.value()) {
            case EPERM:
            case EACCES:
            case EROFS:
                return err_perm;
            case ENOMEM:
                return err_nomem;
            case EINVAL:
                return err_inval;
            case ENOSPC:
            case EDQUOT:
            case EFBIG:
                return err_nospc;
            case EOVERFLOW:
                return err_overflow;
            case ENOTSUP:
                return err_notsup;
            case ESHUTDOWN:
                return err_shutdown;
            default:
                return err_io;
        }
    }
    return err_io;
}

std::string_view command_name(std::uint16_t type) noexcept {
    switch (type) {
        case cmd_read:
            return "READ";
        case cmd_write:
            return "WRITE";
        case cmd_disc:
            return "DISC";
        case cmd_flush:
            return "FLUSH";
        case cmd_trim:
            return "TRIM";
        case cmd_cache:
            return "CACHE";
        case cmd_write_zeroes:
            return "WRITE_ZEROES";
        case cmd_block_status:
            return "BLOCK_STATUS";
        case cmd_resize:
            return "RESIZE";
        default:
            return "unknown command";
    }
}

std::string_view option_name(std::uint32_t option) noexcept {
    switch (option) {
        case opt_export_name:
            return "EXPORT_NAME";
        case opt_abort:
            return "ABORT";
        case opt_list:
            return "LIST";
        case opt_peek_export:
            return "PEEK_EXPORT";
        case opt_starttls:
            return "STARTTLS";
        case opt_info:
            return "INFO";
        case opt_go:
            return "GO";
        case opt_structured_reply:
            return "STRUCTURED_REPLY";
        case opt_list_meta_context:
            return "LIST_META_CONTEXT";
        case opt_set_meta_context:
            return "SET_META_CONTEXT";
        case opt_extended_headers:
            return "EXTENDED_HEADERS";
        default:
            return "unknown option";
    }
}

}  // namespace qed::nbd
