// SPDX-License-Identifier: BSL-1.0
#include "server/nbd_tls.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <unistd.h>

#include <cctype>
#include <fstream>

#include "server/option_text.hpp"

namespace qed::nbd {

// ---------------------------------------------------------------------------
// --object parsing
// ---------------------------------------------------------------------------

std::optional<tls_object> parse_object(std::string_view spec, std::string& error) {
    const auto parts = split_options(spec);
    tls_object o;
    const std::string& type = parts[0];
    if (type == "tls-creds-x509")
        o.type = tls_object::kind::x509;
    else if (type == "tls-creds-psk")
        o.type = tls_object::kind::psk;
    else if (type == "authz-simple")
        o.type = tls_object::kind::authz_simple;
    else {
        error = "--object: unsupported object type '" + type + "' (tls-creds-x509, tls-creds-psk, authz-simple)";
        return std::nullopt;
    }
    bool have_identity = false;
    for (std::size_t i = 1; i < parts.size(); ++i) {
        const std::string& p = parts[i];
        const auto eq = p.find('=');
        if (eq == std::string::npos) {
            error = "--object " + type + ": expected key=value, got '" + p + "'";
            return std::nullopt;
        }
        const std::string key = p.substr(0, eq);
        const std::string value = p.substr(eq + 1);
        const bool creds = o.type != tls_object::kind::authz_simple;
        if (key == "id") {
            o.id = value;
        } else if (creds && key == "dir") {
            o.dir = value;
        } else if (creds && key == "endpoint") {
            if (value != "server") {
                error = "--object " + type + ": endpoint must be 'server' for qed-nbd, not '" + value + "'";
                return std::nullopt;
            }
        } else if (o.type == tls_object::kind::x509 && key == "verify-peer") {
            const auto b = parse_bool(value);
            if (!b) {
                error = "--object " + type + ": verify-peer must be on or off, not '" + value + "'";
                return std::nullopt;
            }
            o.verify_peer = *b;
        } else if (o.type == tls_object::kind::authz_simple && key == "identity") {
            o.identity = value;
            have_identity = true;
        } else {
            error = "--object " + type + ": unknown property '" + key + "'";
            return std::nullopt;
        }
    }
    if (o.id.empty()) {
        error = "--object " + type + ": id= is required";
        return std::nullopt;
    }
    if (o.type != tls_object::kind::authz_simple && o.dir.empty()) {
        error = "--object " + type + ",id=" + o.id + ": dir= is required";
        return std::nullopt;
    }
    if (o.type == tls_object::kind::authz_simple && !have_identity) {
        error = "--object authz-simple,id=" + o.id + ": identity= is required";
        return std::nullopt;
    }
    return o;
}

// ---------------------------------------------------------------------------
// The context
// ---------------------------------------------------------------------------

namespace {

std::string ssl_error_text() {
    const unsigned long e = ::ERR_get_error();
    ::ERR_clear_error();
    if (!e) return "unknown TLS library error";
    char buf[256];
    ::ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

/// Per-SSL slot: the PSK identity a client offered (kept for the log).
int psk_identity_index() {
    static const int index = ::SSL_get_ex_new_index(
        0, nullptr, nullptr, nullptr,
        [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::string*>(ptr); });
    return index;
}

/// Per-SSL_CTX slot: the tls_server that owns the context.
int server_index() {
    static const int index = ::SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

/// The subject of a certificate, "C=GB,O=Example,CN=client" (`reversed`
/// false: the order qemu-nbd 7.2 prints and matches, GnuTLS's get_dn) or
/// "CN=client,O=Example,C=GB" (`reversed`: RFC 4514 order).
std::string subject_dn(X509* cert, bool reversed) {
    BIO* bio = ::BIO_new(::BIO_s_mem());
    if (!bio) return {};
    unsigned long flags = XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB;
    if (!reversed) flags &= ~XN_FLAG_DN_REV;
    ::X509_NAME_print_ex(bio, ::X509_get_subject_name(cert), 0, flags);
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    std::string s(data, static_cast<std::size_t>(n > 0 ? n : 0));
    ::BIO_free(bio);
    return s;
}

bool readable(const std::string& path) {
    return ::access(path.c_str(), R_OK) == 0;
}

/// keys.psk: "user:hexkey" per line; false with `error` on a malformed line.
bool load_psk_file(const std::string& path, std::map<std::string, std::vector<unsigned char>, std::less<>>& keys,
                   std::string& error) {
    std::ifstream f(path);
    if (!f) {
        error = path + ": cannot open the PSK file";
        return false;
    }
    std::string line;
    unsigned lineno = 0;
    while (std::getline(f, line)) {
        ++lineno;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        const auto colon = line.find(':');
        const std::string where = path + ":" + std::to_string(lineno);
        if (colon == std::string::npos || colon == 0) {
            error = where + ": expected username:hexkey";
            return false;
        }
        const std::string hex = line.substr(colon + 1);
        if (hex.empty() || hex.size() % 2 || hex.size() / 2 > PSK_MAX_PSK_LEN) {
            error = where + ": the key must be an even number of hex digits, at most " +
                    std::to_string(2 * PSK_MAX_PSK_LEN);
            return false;
        }
        std::vector<unsigned char> key;
        for (std::size_t i = 0; i < hex.size(); i += 2) {
            const auto digit = [](char c) -> int {
                if (c >= '0' && c <= '9') return c - '0';
                c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
                if (c >= 'a' && c <= 'f') return c - 'a' + 10;
                return -1;
            };
            const int hi = digit(hex[i]);
            const int lo = digit(hex[i + 1]);
            if (hi < 0 || lo < 0) {
                error = where + ": the key is not hexadecimal";
                return false;
            }
            key.push_back(static_cast<unsigned char>(hi * 16 + lo));
        }
        keys[line.substr(0, colon)] = std::move(key);
    }
    if (keys.empty()) {
        error = path + ": no keys in the PSK file";
        return false;
    }
    return true;
}

}  // namespace

tls_server::tls_server(tls_settings settings)
    : settings_(std::move(settings)), ctx_(boost::asio::ssl::context::tls_server) {}

tls_server::~tls_server() = default;

std::unique_ptr<tls_server> tls_server::create(const tls_settings& settings, std::string& error) {
    std::unique_ptr<tls_server> t(new tls_server(settings));
    SSL_CTX* ctx = t->ctx_.native_handle();
    ::SSL_CTX_set_ex_data(ctx, server_index(), t.get());
    ::SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    ::SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    // No session tickets or resumption: every connection authenticates afresh.
    ::SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    ::SSL_CTX_set_num_tickets(ctx, 0);
    ::SSL_CTX_set_dh_auto(ctx, 1);
    const std::string& dir = settings.creds.dir;

    if (settings.creds.type == tls_object::kind::psk) {
        if (!load_psk_file(dir + "/keys.psk", t->keys_, error)) return nullptr;
        // TLS 1.3 uses the same callback (external PSK, SHA-256 suites);
        // TLS 1.2 needs the PSK cipher suites, which are not in the default list.
        ::SSL_CTX_set_psk_server_callback(ctx, &tls_server::psk_callback);
        if (::SSL_CTX_set_cipher_list(ctx, "ECDHEPSK:DHEPSK:PSK:!eNULL:!3DES:!SHA1@STRENGTH") != 1) {
            error = "cannot select the PSK cipher suites: " + ssl_error_text();
            return nullptr;
        }
        return t;
    }

    const std::string ca = dir + "/ca-cert.pem";
    const std::string cert = dir + "/server-cert.pem";
    const std::string key = dir + "/server-key.pem";
    for (const auto* f : {&ca, &cert, &key}) {
        if (!readable(*f)) {
            error = *f + ": cannot read it (tls-creds-x509 needs ca-cert.pem, server-cert.pem and server-key.pem)";
            return nullptr;
        }
    }
    if (::SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
        error = cert + ": not a usable certificate: " + ssl_error_text();
        return nullptr;
    }
    if (::SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
        error = key + ": not a usable private key: " + ssl_error_text();
        return nullptr;
    }
    if (::SSL_CTX_check_private_key(ctx) != 1) {
        error = key + ": does not match " + cert;
        return nullptr;
    }
    if (::SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
        error = ca + ": not a usable CA certificate: " + ssl_error_text();
        return nullptr;
    }
    // The client is told which CA its certificate must come from.
    if (STACK_OF(X509_NAME)* names = ::SSL_load_client_CA_file(ca.c_str())) ::SSL_CTX_set_client_CA_list(ctx, names);
    const std::string crl = dir + "/ca-crl.pem";
    if (readable(crl)) {
        X509_STORE* store = ::SSL_CTX_get_cert_store(ctx);
        X509_LOOKUP* lookup = ::X509_STORE_add_lookup(store, ::X509_LOOKUP_file());
        if (!lookup || ::X509_load_crl_file(lookup, crl.c_str(), X509_FILETYPE_PEM) <= 0) {
            error = crl + ": not a usable revocation list: " + ssl_error_text();
            return nullptr;
        }
        ::X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
    }
    if (settings.creds.verify_peer)
        ::SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    else if (!settings.allowed.empty())
        // --tls-authz needs a certificate to check: ask for one, verified.
        ::SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    else
        ::SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    return t;
}

unsigned int tls_server::psk_callback(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_len) {
    const auto* self = static_cast<const tls_server*>(::SSL_CTX_get_ex_data(::SSL_get_SSL_CTX(ssl), server_index()));
    const std::string who = identity ? identity : "";
    if (auto* old = static_cast<std::string*>(::SSL_get_ex_data(ssl, psk_identity_index()))) {
        *old = who;
    } else {
        ::SSL_set_ex_data(ssl, psk_identity_index(), new std::string(who));
    }
    if (!self) return 0;
    const auto it = self->keys_.find(who);
    if (it == self->keys_.end() || it->second.size() > max_len) return 0;  // unknown user: the handshake fails
    std::copy(it->second.begin(), it->second.end(), psk);
    return static_cast<unsigned int>(it->second.size());
}

std::string tls_server::authorize(SSL* ssl, std::string& identity) const {
    if (settings_.creds.type == tls_object::kind::psk) {
        const auto* who = static_cast<const std::string*>(::SSL_get_ex_data(ssl, psk_identity_index()));
        identity = who ? *who : "";
        if (settings_.allowed.empty()) return {};
        for (const auto& a : settings_.allowed)
            if (a == identity) return {};
        return "PSK user '" + identity + "' is not allowed by --tls-authz";
    }
    X509* cert = ::SSL_get1_peer_certificate(ssl);
    if (!cert) {
        identity.clear();
        if (settings_.allowed.empty()) return {};
        return "no client certificate to check against --tls-authz";
    }
    identity = subject_dn(cert, false);
    const std::string rfc4514 = subject_dn(cert, true);
    ::X509_free(cert);
    if (settings_.allowed.empty()) return {};
    // Either order names the same subject: qemu-nbd 7.2's, or RFC 4514's
    // (which QEMU's documentation shows).
    for (const auto& a : settings_.allowed)
        if (a == identity || a == rfc4514) return {};
    return "client certificate '" + identity + "' is not allowed by --tls-authz";
}

std::string tls_server::failure_reason(SSL* ssl, const std::string& fallback) const {
    if (!ssl) return fallback;
    if (settings_.creds.type == tls_object::kind::psk) {
        const auto* who = static_cast<const std::string*>(::SSL_get_ex_data(ssl, psk_identity_index()));
        if (who && keys_.find(*who) == keys_.end()) return "unknown PSK user '" + *who + "'";
        return fallback;
    }
    const long v = ::SSL_get_verify_result(ssl);
    if (v != X509_V_OK) return std::string("client certificate: ") + ::X509_verify_cert_error_string(v);
    return fallback;
}

}  // namespace qed::nbd
