// SPDX-License-Identifier: BSL-1.0
#include "server/nbd_handshake.hpp"

#include <algorithm>
#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <memory>
#include <optional>

#include "server/nbd_tls.hpp"

namespace qed::nbd {

// ---------------------------------------------------------------------------
// Error category
// ---------------------------------------------------------------------------

namespace {

class nbd_category : public std::error_category {
public:
    const char* name() const noexcept override { return "nbd"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
            case errc::aborted:
                return "client aborted the handshake";
            case errc::bad_client_flags:
                return "unknown client flags";
            case errc::bad_magic:
                return "bad magic number";
            case errc::not_fixed_newstyle:
                return "option other than EXPORT_NAME from a plain newstyle client";
            case errc::unknown_export:
                return "unknown export name";
            case errc::handshake_timeout:
                return "handshake timed out";
            case errc::tls_required:
                return "client did not start TLS, which this server requires";
            case errc::tls_refused:
                return "TLS refused";
        }
        return "unknown nbd error";
    }
};

void append(std::vector<std::byte>& out, std::string_view s) {
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    out.insert(out.end(), p, p + s.size());
}
void append16(std::vector<std::byte>& out, std::uint16_t v) {
    std::byte b[2];
    put16(b, v);
    out.insert(out.end(), b, b + 2);
}
void append32(std::vector<std::byte>& out, std::uint32_t v) {
    std::byte b[4];
    put32(b, v);
    out.insert(out.end(), b, b + 4);
}
void append64(std::vector<std::byte>& out, std::uint64_t v) {
    std::byte b[8];
    put64(b, v);
    out.insert(out.end(), b, b + 8);
}

std::string_view as_string(std::span<const std::byte> data) {
    return {reinterpret_cast<const char*>(data.data()), data.size()};
}

/// Reads big-endian fields from option data, remembering if it ran short.
class field_reader {
public:
    explicit field_reader(std::span<const std::byte> data) : data_(data) {}
    bool ok() const noexcept { return ok_; }
    bool at_end() const noexcept { return pos_ == data_.size(); }
    std::size_t left() const noexcept { return data_.size() - pos_; }
    std::uint16_t u16() { return take(2) ? get16(data_.data() + pos_ - 2) : 0; }
    std::uint32_t u32() { return take(4) ? get32(data_.data() + pos_ - 4) : 0; }
    std::string_view str(std::uint64_t n) {
        if (n > left() || !take(static_cast<std::size_t>(n))) {
            ok_ = false;
            return {};
        }
        return as_string(data_.subspan(pos_ - static_cast<std::size_t>(n), static_cast<std::size_t>(n)));
    }

private:
    bool take(std::size_t n) {
        if (!ok_ || n > left()) return ok_ = false;
        pos_ += n;
        return true;
    }
    std::span<const std::byte> data_;
    std::size_t pos_ = 0;
    bool ok_ = true;
};

}  // namespace

const std::error_category& category() noexcept {
    static const nbd_category c;
    return c;
}

void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload) {
    std::byte h[option_reply_header_size];
    encode_option_reply_header(h, option, type, static_cast<std::uint32_t>(payload.size()));
    out.insert(out.end(), h, h + sizeof h);
    out.insert(out.end(), payload.begin(), payload.end());
}

// ---------------------------------------------------------------------------
// negotiator
// ---------------------------------------------------------------------------

std::uint16_t negotiator::transmission_flags(const export_info& info) const noexcept {
    std::uint16_t f = info.flags | flag_has_flags;
    if (session_.structured) f |= flag_send_df;  // one content chunk per read, always
    return f;
}

std::optional<std::size_t> negotiator::find(std::string_view name) {
    for (std::size_t i = 0; i < exports_.size(); ++i)
        if (exports_[i]->name == name) return i;
    unknown_ = std::string(name);
    return std::nullopt;
}

void negotiator::choose(std::size_t index) noexcept {
    session_.export_index = index;
    if (meta_export_ && *meta_export_ != index) {
        // The spec ties contexts to the export they were set for.
        session_.base_allocation = false;
        session_.allocation_depth = false;
    }
}

negotiator::next negotiator::error(std::uint32_t option, std::uint32_t type, std::string_view message,
                                   std::vector<std::byte>& out) {
    const auto msg = message.substr(0, max_string);
    append_option_reply(out, option, type,
                        std::span<const std::byte>(reinterpret_cast<const std::byte*>(msg.data()), msg.size()));
    return next::more_options;
}

negotiator::next negotiator::handle(std::uint32_t option, std::span<const std::byte> data,
                                    std::vector<std::byte>& out) {
    unknown_.reset();
    if (!fixed_ && option != opt_export_name) {
        // Plain newstyle has no way to refuse an option but to hang up.
        drop_reason_ = errc::not_fixed_newstyle;
        return next::drop;
    }
    if (tls_required_ && !tls_active_ && option != opt_starttls && option != opt_abort) {
        // Nothing but STARTTLS before TLS; EXPORT_NAME cannot be refused.
        refused_without_tls_ = true;
        if (option == opt_export_name) {
            drop_reason_ = errc::tls_required;
            return next::drop;
        }
        return error(option, rep_err_tls_reqd, "TLS is required on this server: start with NBD_OPT_STARTTLS", out);
    }
    switch (option) {
        case opt_export_name:
            return export_name(data, out);
        case opt_abort:
            append_option_reply(out, option, rep_ack);
            return next::abort;
        case opt_list:
            return list(data, out);
        case opt_starttls:
            if (!data.empty()) return error(option, rep_err_invalid, "STARTTLS takes no data", out);
            if (!tls_required_) return error(option, rep_err_policy, "TLS is not configured on this server", out);
            if (tls_active_) return error(option, rep_err_invalid, "TLS is already active", out);
            append_option_reply(out, option, rep_ack);
            return next::starttls;
        case opt_info:
        case opt_go:
            return info_or_go(option, data, out);
        case opt_structured_reply:
            if (!data.empty()) return error(option, rep_err_invalid, "STRUCTURED_REPLY takes no data", out);
            if (session_.structured)
                return error(option, rep_err_invalid, "structured replies already negotiated", out);
            session_.structured = true;
            append_option_reply(out, option, rep_ack);
            return next::more_options;
        case opt_list_meta_context:
        case opt_set_meta_context:
            return meta_context(option, data, out);
        default:
            return error(option, rep_err_unsup, "option not supported", out);
    }
}

negotiator::next negotiator::handle_oversized(std::uint32_t option, std::vector<std::byte>& out) {
    unknown_.reset();
    if (tls_required_ && !tls_active_ && option != opt_export_name && fixed_) {
        refused_without_tls_ = true;
        return error(option, rep_err_tls_reqd, "TLS is required on this server: start with NBD_OPT_STARTTLS", out);
    }
    if (option == opt_export_name || !fixed_) {
        drop_reason_ = option == opt_export_name ? errc::unknown_export : errc::not_fixed_newstyle;
        return next::drop;
    }
    return error(option, rep_err_too_big, "option data too long", out);
}

negotiator::next negotiator::export_name(std::span<const std::byte> data, std::vector<std::byte>& out) {
    const auto index = find(as_string(data));
    if (!index) {
        // EXPORT_NAME has no error reply: the spec says hang up.
        drop_reason_ = errc::unknown_export;
        return next::drop;
    }
    const export_info& info = *exports_[*index];
    choose(*index);
    session_.flags = transmission_flags(info);
    append64(out, info.size);
    append16(out, session_.flags);
    if (!no_zeroes_) out.insert(out.end(), 124, std::byte{0});
    return next::transmission;
}

negotiator::next negotiator::list(std::span<const std::byte> data, std::vector<std::byte>& out) {
    if (!data.empty()) return error(opt_list, rep_err_invalid, "LIST takes no data", out);
    // One NBD_REP_SERVER per export: u32 name length, name, description.
    std::vector<std::byte> payload;
    for (const export_info* info : exports_) {
        payload.clear();
        append32(payload, static_cast<std::uint32_t>(info->name.size()));
        append(payload, info->name);
        append(payload, info->description);
        append_option_reply(out, opt_list, rep_server, payload);
    }
    append_option_reply(out, opt_list, rep_ack);
    return next::more_options;
}

negotiator::next negotiator::info_or_go(std::uint32_t option, std::span<const std::byte> data,
                                        std::vector<std::byte>& out) {
    // Data: u32 name length, name, u16 count, count x u16 information requests.
    field_reader in(data);
    const std::uint32_t name_len = in.u32();
    const std::string_view name = in.str(name_len);
    const std::uint16_t count = in.u16();
    bool want_name = false;
    bool want_description = false;
    for (unsigned i = 0; in.ok() && i < count; ++i) {
        const std::uint16_t what = in.u16();
        want_name |= what == info_name;
        want_description |= what == info_description;
    }
    if (!in.ok() || !in.at_end()) return error(option, rep_err_invalid, "malformed INFO/GO request", out);
    if (name_len > max_string) return error(option, rep_err_invalid, "export name too long", out);
    const auto index = find(name);
    if (!index) return error(option, rep_err_unknown, "export '" + std::string(name) + "' not present", out);
    const export_info& info = *exports_[*index];

    const std::uint16_t flags = transmission_flags(info);
    std::vector<std::byte> payload;
    append16(payload, info_export);
    append64(payload, info.size);
    append16(payload, flags);
    append_option_reply(out, option, rep_info, payload);
    if (want_name) {
        payload.clear();
        append16(payload, info_name);
        append(payload, info.name);
        append_option_reply(out, option, rep_info, payload);
    }
    if (want_description && !info.description.empty()) {
        payload.clear();
        append16(payload, info_description);
        append(payload, info.description);
        append_option_reply(out, option, rep_info, payload);
    }
    // Sent whether or not it was asked for (the protocol allows it): the
    // driver needs 512-byte aligned requests and says so.
    payload.clear();
    append16(payload, info_block_size);
    append32(payload, info.min_block);
    append32(payload, info.preferred_block);
    append32(payload, info.max_payload);
    append_option_reply(out, option, rep_info, payload);
    append_option_reply(out, option, rep_ack);
    if (option == opt_info) return next::more_options;
    choose(*index);
    session_.flags = flags;
    return next::transmission;
}

negotiator::next negotiator::meta_context(std::uint32_t option, std::span<const std::byte> data,
                                          std::vector<std::byte>& out) {
    const bool set = option == opt_set_meta_context;
    if (!session_.structured)
        return error(option, rep_err_invalid, "negotiate structured replies before metadata contexts", out);
    // Data: u32 export name length, name, u32 query count, count x (u32 length, query).
    field_reader in(data);
    const std::uint32_t name_len = in.u32();
    const std::string_view name = in.str(name_len);
    const std::uint32_t count = in.u32();
    std::vector<std::string_view> queries;
    for (std::uint32_t i = 0; in.ok() && i < count; ++i) {
        const std::uint32_t len = in.u32();
        if (len > max_string) return error(option, rep_err_invalid, "metadata context query too long", out);
        queries.push_back(in.str(len));
    }
    if (!in.ok() || !in.at_end()) return error(option, rep_err_invalid, "malformed metadata context request", out);
    const auto index = find(name);
    if (!index) return error(option, rep_err_unknown, "export '" + std::string(name) + "' not present", out);
    const export_info& info = *exports_[*index];

    bool base = false;
    bool depth = false;
    if (!set && queries.empty()) {
        base = true;
        depth = info.allocation_depth;
    }
    for (const auto q : queries) {
        // LIST accepts a bare namespace ("base:") meaning all of its contexts;
        // SET selects only exact names. Unknown names are not errors.
        if (q == context_base_allocation || (!set && q == "base:")) base = true;
        if (info.allocation_depth && (q == context_allocation_depth || (!set && q == "qemu:"))) depth = true;
    }
    auto reply = [&](std::uint32_t id, std::string_view context) {
        std::vector<std::byte> payload;
        append32(payload, set ? id : 0);
        append(payload, context);
        append_option_reply(out, option, rep_meta_context, payload);
    };
    if (base) reply(base_allocation_id, context_base_allocation);
    if (depth) reply(allocation_depth_id, context_allocation_depth);
    append_option_reply(out, option, rep_ack);
    if (set) {
        session_.base_allocation = base;
        session_.allocation_depth = depth;
        meta_export_ = *index;
    }
    return next::more_options;
}

// ---------------------------------------------------------------------------
// The composed operation
// ---------------------------------------------------------------------------

namespace {

class handshake_op {
public:
    enum class step {
        starting,       ///< about to send the greeting
        greeting_sent,  ///< greeting written; read the client flags
        client_flags,   ///< client flags read
        option_header,  ///< an option header read
        option_data,    ///< its data read
        discarding,     ///< skipping the data of an oversized option
        reply_sent,     ///< the reply to an option written
        tls_handshake,  ///< STARTTLS acknowledged; the TLS handshake is running
    };

    handshake_op(nbd_stream& stream, export_list exports, tls_server* tls, handshake_report& report)
        : stream_(stream), tls_(tls), report_(report), st_(std::make_unique<state>(exports)) {}

    template <class Self>
    void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
        state& s = *st_;
        if (ec) {
            if (s.at == step::tls_handshake) {
                const bool gone = ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
                                  ec == boost::asio::ssl::error::stream_truncated;
                report_.refusal =
                    "TLS handshake failed: " +
                    tls_->failure_reason(
                        stream_.tls()->native_handle(),
                        gone ? "the client hung up (did it reject the server's certificate?)" : ec.message());
                return self.complete(make_error_code(errc::tls_refused), session{});
            }
            if (s.talk && s.talk->refused_without_tls() && !report_.tls)
                report_.refusal = "refused: the client did not start TLS, which this server requires";
            else if (report_.tls && (ec == boost::asio::error::eof || ec == boost::asio::ssl::error::stream_truncated))
                // The server cannot see why; this is what it usually means.
                report_.refusal =
                    "client hung up right after the TLS handshake (did it reject the server's certificate?)";
            return self.complete(std::error_code(ec), session{});
        }
        switch (s.at) {
            case step::starting:
                put64(s.small.data(), init_magic);
                put64(s.small.data() + 8, opts_magic);
                put16(s.small.data() + 16, flag_fixed_newstyle | flag_no_zeroes);
                s.at = step::greeting_sent;
                return boost::asio::async_write(stream_, boost::asio::buffer(s.small.data(), greeting_size),
                                                std::move(self));
            case step::greeting_sent:
                s.at = step::client_flags;
                return boost::asio::async_read(stream_, boost::asio::buffer(s.small.data(), 4), std::move(self));
            case step::client_flags: {
                const std::uint32_t flags = get32(s.small.data());
                if (flags & ~(flag_c_fixed_newstyle | flag_c_no_zeroes))
                    return self.complete(make_error_code(errc::bad_client_flags), session{});
                s.talk.emplace(s.exports, (flags & flag_c_fixed_newstyle) != 0, (flags & flag_c_no_zeroes) != 0,
                               tls_ != nullptr);
                return read_option_header(self);
            }
            case step::option_header: {
                if (get64(s.small.data()) != opts_magic)
                    return self.complete(make_error_code(errc::bad_magic), session{});
                s.option = get32(s.small.data() + 8);
                const std::uint32_t length = get32(s.small.data() + 12);
                if (length > max_option_length) {
                    s.discard_left = length;
                    s.data.resize(64 * 1024);
                    s.at = step::discarding;
                    return discard_some(self);
                }
                s.data.resize(length);
                s.at = step::option_data;
                if (length == 0) return answer(self, s.talk->handle(s.option, {}, s.out));
                return boost::asio::async_read(stream_, boost::asio::buffer(s.data), std::move(self));
            }
            case step::option_data:
                return answer(self, s.talk->handle(s.option, s.data, s.out));
            case step::discarding:
                s.discard_left -= n;
                if (s.discard_left) return discard_some(self);
                return answer(self, s.talk->handle_oversized(s.option, s.out));
            case step::reply_sent:
                s.out.clear();
                switch (s.after) {
                    case negotiator::next::more_options:
                        return read_option_header(self);
                    case negotiator::next::transmission:
                        return self.complete({}, s.talk->result());
                    case negotiator::next::abort:
                        if (s.talk->refused_without_tls() && !report_.tls)
                            report_.refusal = "refused: the client did not start TLS, which this server requires";
                        return self.complete(make_error_code(errc::aborted), session{});
                    case negotiator::next::starttls:
                        stream_.start_tls(tls_->context());
                        s.at = step::tls_handshake;
                        return stream_.async_tls_handshake(std::move(self));
                    case negotiator::next::drop:
                        break;  // never written
                }
                return self.complete(make_error_code(errc::aborted), session{});
            case step::tls_handshake: {
                report_.tls = true;
                std::string refusal = tls_->authorize(stream_.tls()->native_handle(), report_.identity);
                if (!refusal.empty()) {
                    report_.refusal = "refused: " + refusal;
                    return self.complete(make_error_code(errc::tls_refused), session{});
                }
                s.talk->tls_started();
                return read_option_header(self);
            }
        }
    }

private:
    struct state {
        explicit state(export_list e) : exports(e) {}
        export_list exports;
        step at = step::starting;
        std::array<std::byte, 32> small{};
        std::vector<std::byte> data;
        std::vector<std::byte> out;
        std::optional<negotiator> talk;
        std::uint32_t option = 0;
        std::uint64_t discard_left = 0;
        negotiator::next after = negotiator::next::more_options;
    };

    template <class Self>
    void read_option_header(Self& self) {
        st_->at = step::option_header;
        boost::asio::async_read(stream_, boost::asio::buffer(st_->small.data(), option_header_size), std::move(self));
    }

    template <class Self>
    void discard_some(Self& self) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(st_->discard_left, st_->data.size()));
        boost::asio::async_read(stream_, boost::asio::buffer(st_->data.data(), n), std::move(self));
    }

    template <class Self>
    void answer(Self& self, negotiator::next what) {
        state& s = *st_;
        if (auto name = s.talk->unknown_export(); name && report_.unknown_export) report_.unknown_export(*name);
        if (what == negotiator::next::drop) {
            if (s.talk->drop_reason() == errc::tls_required)
                report_.refusal = "refused: the client did not start TLS, which this server requires";
            return self.complete(s.talk->drop_reason(), session{});
        }
        s.after = what;
        s.at = step::reply_sent;
        s.data.clear();
        s.data.shrink_to_fit();
        boost::asio::async_write(stream_, boost::asio::buffer(s.out), std::move(self));
    }

    nbd_stream& stream_;
    tls_server* tls_;
    handshake_report& report_;
    std::unique_ptr<state> st_;
};

}  // namespace

void initiate_handshake(nbd_stream& stream, export_list exports, tls_server* tls, handshake_report& report,
                        handshake_handler handler) {
    boost::asio::async_compose<handshake_handler, void(std::error_code, session)>(
        handshake_op(stream, exports, tls, report), handler, stream.socket());
}

}  // namespace qed::nbd
