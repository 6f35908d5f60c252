// SPDX-License-Identifier: BSL-1.0
// TLS for qed-nbd: credentials in qemu-nbd's shape, the OpenSSL context
// behind boost::asio::ssl, and the check of who the client is.
//
// Command-line objects, as qemu-nbd takes them:
//   --object tls-creds-x509,id=ID,endpoint=server,dir=DIR[,verify-peer=on|off]
//       DIR/ca-cert.pem, DIR/server-cert.pem, DIR/server-key.pem
//       [, DIR/ca-crl.pem]; verify-peer (default on, as in QEMU) asks every
//       client for a certificate signed by the CA.
//   --object tls-creds-psk,id=ID,endpoint=server,dir=DIR
//       DIR/keys.psk: lines "username:hexkey" (the file qemu-nbd, nbdkit
//       and libnbd read).
//   --object authz-simple,id=ID,identity=NAME
//       NAME is the client certificate's distinguished name, in the order
//       qemu-nbd 7.2 prints it ("C=GB,O=Example,CN=client") or in RFC 4514
//       order ("CN=client,O=Example,C=GB"), or the PSK user name.
// In option values "," is written ",," (QEMU's escaping).
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct ssl_st SSL;

namespace qed::nbd {

/// One --object argument.
struct tls_object {
    enum class kind { x509, psk, authz_simple };
    kind type = kind::x509;
    std::string id;
    std::string dir;          ///< creds: where the files are
    bool verify_peer = true;  ///< x509: require and verify a client certificate
    std::string identity;     ///< authz-simple: who is allowed
};

/// Parse "TYPE,key=value,...". nullopt with `error` set when malformed.
std::optional<tls_object> parse_object(std::string_view spec, std::string& error);

/// What the server's TLS is made of, resolved from the objects.
struct tls_settings {
    tls_object creds;                  ///< x509 or psk
    std::vector<std::string> allowed;  ///< identities allowed; empty: anyone with valid credentials
};

/// The server's TLS context; shared by all connections (read-only once built).
class tls_server {
public:
    /// Load the credential files. nullptr with `error` naming the file and cause.
    static std::unique_ptr<tls_server> create(const tls_settings& settings, std::string& error);
    ~tls_server();
    tls_server(const tls_server&) = delete;
    tls_server& operator=(const tls_server&) = delete;

    boost::asio::ssl::context& context() noexcept { return ctx_; }

    /// After a successful handshake: who the client is (certificate DN or
    /// PSK user) and whether it may go on. Returns the refusal reason, or
    /// an empty string when allowed.
    std::string authorize(SSL* ssl, std::string& identity) const;
    /// Why a handshake failed, in the server's terms (the certificate
    /// verification error, the unknown PSK user), falling back to `fallback`.
    std::string failure_reason(SSL* ssl, const std::string& fallback) const;

private:
    explicit tls_server(tls_settings settings);
    static unsigned int psk_callback(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_len);

    tls_settings settings_;
    boost::asio::ssl::context ctx_;
    std::map<std::string, std::vector<unsigned char>, std::less<>> keys_;  ///< PSK user -> key
};

}  // namespace qed::nbd
