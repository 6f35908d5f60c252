// SPDX-License-Identifier: BSL-1.0
// The NBD handshake: fixed newstyle negotiation up to the transmission phase.
//
// Two layers: `negotiator` decides what to answer to each option (no I/O,
// so it can be reasoned about and tested on its own), and async_handshake()
// is the composed operation that moves bytes between it and a socket.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "server/nbd_protocol.hpp"
#include "server/nbd_stream.hpp"

namespace qed::nbd {

/// Why a connection ended before or outside the normal flow.
enum class errc {
    aborted = 1,         ///< the client sent NBD_OPT_ABORT (a soft disconnect)
    bad_client_flags,    ///< unknown client flags: the spec says drop the connection
    bad_magic,           ///< option or request magic wrong: can't resynchronise
    not_fixed_newstyle,  ///< plain newstyle client sent something other than EXPORT_NAME
    unknown_export,      ///< EXPORT_NAME for an export we don't have (cannot be answered)
    handshake_timeout,   ///< the handshake took longer than allowed
    tls_required,        ///< EXPORT_NAME without TLS on a server that requires it
    tls_refused,         ///< the TLS handshake failed or the client is not allowed
};

const std::error_category& category() noexcept;
inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), category()};
}

/// What the server tells clients about one of its exports.
struct export_info {
    std::string name;         ///< the export name clients must ask for ("" by default)
    std::string description;  ///< NBD_INFO_DESCRIPTION / NBD_OPT_LIST details; may be empty
    std::uint64_t size = 0;
    /// Transmission flags except NBD_FLAG_SEND_DF, which follows structured replies.
    std::uint16_t flags = flag_has_flags;
    std::uint32_t min_block = 512;
    std::uint32_t preferred_block = 4096;
    std::uint32_t max_payload = 32u << 20;
    bool allocation_depth = true;  ///< offer qemu:allocation-depth besides base:allocation
};

/// Metadata context ids handed out by SET_META_CONTEXT (0: not selected).
inline constexpr std::uint32_t base_allocation_id = 1;
inline constexpr std::uint32_t allocation_depth_id = 2;

/// The exports a server offers, in NBD_OPT_LIST order. A client picks one
/// by its exact name (an empty name picks the export named "", if any).
using export_list = std::span<const export_info* const>;

/// What the handshake settled for the transmission phase.
struct session {
    std::size_t export_index = 0;  ///< the export chosen, an index into the export_list
    bool structured = false;       ///< NBD_OPT_STRUCTURED_REPLY acknowledged
    bool base_allocation = false;
    bool allocation_depth = false;
    std::uint16_t flags = 0;  ///< transmission flags as sent to the client
};

/// Option haggling without I/O: one call per option received.
class negotiator {
public:
    enum class next {
        more_options,  ///< send the reply, read the next option
        transmission,  ///< send the reply, enter the transmission phase
        abort,         ///< send the reply, then close (soft disconnect)
        drop,          ///< close at once without a reply (hard disconnect)
        starttls,      ///< send the reply, then the TLS handshake; options go on over TLS
    };

    /// `exports` must outlive the negotiator. `tls_required`: TLS is
    /// configured, so every option but STARTTLS and ABORT is refused with
    /// NBD_REP_ERR_TLS_REQD until TLS is up.
    negotiator(export_list exports, bool fixed_newstyle, bool no_zeroes, bool tls_required = false)
        : exports_(exports), fixed_(fixed_newstyle), no_zeroes_(no_zeroes), tls_required_(tls_required) {}

    /// Handle `option` with its `data`; append the bytes to send to `out`.
    next handle(std::uint32_t option, std::span<const std::byte> data, std::vector<std::byte>& out);
    /// Handle an option whose data was too long to keep (it was discarded).
    next handle_oversized(std::uint32_t option, std::vector<std::byte>& out);

    const session& result() const noexcept { return session_; }
    /// Why handle() returned next::drop.
    std::error_code drop_reason() const noexcept { return drop_reason_; }
    /// The TLS handshake after next::starttls succeeded.
    void tls_started() noexcept { tls_active_ = true; }
    /// Some option was refused with NBD_REP_ERR_TLS_REQD.
    bool refused_without_tls() const noexcept { return refused_without_tls_; }
    /// The name of an export the last option asked for and the server does
    /// not have (INFO, GO, SET/LIST_META_CONTEXT, EXPORT_NAME); empty
    /// otherwise. Cleared by the next option.
    std::optional<std::string> unknown_export() const { return unknown_; }

private:
    next export_name(std::span<const std::byte> data, std::vector<std::byte>& out);
    next info_or_go(std::uint32_t option, std::span<const std::byte> data, std::vector<std::byte>& out);
    next list(std::span<const std::byte> data, std::vector<std::byte>& out);
    next meta_context(std::uint32_t option, std::span<const std::byte> data, std::vector<std::byte>& out);
    next error(std::uint32_t option, std::uint32_t type, std::string_view message, std::vector<std::byte>& out);
    std::uint16_t transmission_flags(const export_info& info) const noexcept;
    /// Index of the export called `name`, or nullopt (also remembered as unknown_).
    std::optional<std::size_t> find(std::string_view name);
    /// GO/EXPORT_NAME settled on export `index`.
    void choose(std::size_t index) noexcept;

    export_list exports_;
    bool fixed_;
    bool no_zeroes_;
    bool tls_required_;
    bool tls_active_ = false;
    bool refused_without_tls_ = false;
    session session_;
    std::error_code drop_reason_;
    std::optional<std::string> unknown_;
    /// The export the last SET_META_CONTEXT was for; contexts set for one
    /// export are not carried over to another chosen by GO/EXPORT_NAME.
    std::optional<std::size_t> meta_export_;
};

/// Append one option reply (header and payload) to `out`.
void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload = {});

/// Longest option data kept in memory; longer data is read and discarded.
inline constexpr std::size_t max_option_length = 256 * 1024;

class tls_server;

/// What the handshake found out about the client, for the server's log;
/// filled in as it goes, so it is meaningful after a failure too.
struct handshake_report {
    bool tls = false;      ///< the TLS handshake completed
    std::string identity;  ///< TLS: certificate DN or PSK user
    std::string refusal;   ///< non-empty: why the client was refused (always logged)
    /// Called (if set) each time the client asks for an export the server
    /// does not have, with the name it asked for, as it happens.
    std::function<void(std::string_view)> unknown_export;
};

using handshake_handler = boost::asio::any_completion_handler<void(std::error_code, session)>;

void initiate_handshake(nbd_stream& stream, export_list exports, tls_server* tls, handshake_report& report,
                        handshake_handler handler);

/// Run the server side of the handshake on `stream`: greeting, client
/// flags, options until NBD_OPT_GO or NBD_OPT_EXPORT_NAME. With `tls`
/// (not null), the client must start TLS first. `exports` (and the infos it
/// points to), `tls` and `report`
/// must outlive the operation. Signature: void(std::error_code, session).
template <class Token>
auto async_handshake(nbd_stream& stream, export_list exports, tls_server* tls, handshake_report& report,
                     Token&& token) {
    return boost::asio::async_initiate<Token, void(std::error_code, session)>(
        [](auto handler, nbd_stream* s, export_list e, tls_server* t, handshake_report* r) {
            initiate_handshake(*s, e, t, *r, std::move(handler));
        },
        token, &stream, exports, tls, &report);
}

}  // namespace qed::nbd

template <>
struct std::is_error_code_enum<qed::nbd::errc> : std::true_type {};
