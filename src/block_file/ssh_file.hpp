// SPDX-License-Identifier: BSL-1.0
// The SSH backend: a block file whose bytes are a file on an SSH server,
// read and written over SFTP with libssh (ssh_file.cpp), as QEMU's ssh
// driver does.
#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <string>
#include <string_view>

#include "qed/block_file.hpp"

namespace qed::detail {

/// Where a file on an SSH server is and how the server is trusted: QEMU's
/// ssh node options (server.host, server.port, path, user, host-key-check).
struct ssh_location {
    std::string host;
    std::string port = "22";  ///< decimal digits ("Use only numeric port value" otherwise)
    std::string path;         ///< on the server, as sftp_open takes it
    std::string user;         ///< empty: the user this process runs as
    /// How the server's host key is checked (QEMU's host-key-check.mode).
    enum class key_check { known_hosts, none, hash } check = key_check::known_hosts;
    std::string hash_type;  ///< md5, sha1 or sha256 (mode hash)
    std::string hash;       ///< hex digits, ':' between them allowed (mode hash)
    /// The legacy host_key_check text as given (ssh:// names' query and the
    /// host_key_check option): part of the name QEMU shows, empty if none.
    std::string legacy_check;
};

/// ssh:// names: ssh://[USER@]HOST[:PORT]/PATH[?host_key_check=CHECK].
bool is_ssh_name(std::string_view name) noexcept;

/// Parse an ssh:// name as QEMU does (port 0 or none is 22, %XX escapes
/// decoded, query parameters other than host_key_check ignored). False with
/// `why` in QEMU's words ("missing hostname in URI").
bool parse_ssh_name(std::string_view name, ssh_location& out, std::string& why);

/// Apply a legacy host_key_check value: yes, no, md5:HASH, sha1:HASH,
/// sha256:HASH. False with `why` ("unknown host_key_check setting (X)").
bool parse_host_key_check(const std::string& text, ssh_location& out, std::string& why);

/// The name QEMU gives such a file: ssh://USER@HOST:PORT/PATH, with
/// ?host_key_check=CHECK when a legacy check was given. Empty when the
/// user is not given and this process's user name can't be found.
std::string ssh_exact_name(const ssh_location& where);

/// Connect, authenticate and open (or, with options.create, create and
/// truncate) the file, synchronously, like open(2). On failure: null, `ec`
/// set and one line in options.log in QEMU's words, after "NAME: " when
/// `name` is not empty.
std::shared_ptr<block_file> open_ssh_file(const boost::asio::any_io_executor& ex, const ssh_location& where,
                                          const file_options& options, const std::string& name, std::error_code& ec);

/// Completion of an asynchronous open: the error, or the open file.
using file_open_handler =
    boost::asio::any_completion_handler<void(boost::system::error_code, std::shared_ptr<block_file>)>;

/// open_ssh_file on the shared blocking pool: the io_context is not held up
/// while the connection is made. The handler (and options.log) run on `ex`.
void async_open_ssh_file(const boost::asio::any_io_executor& ex, ssh_location where, file_options options,
                         std::string name, file_open_handler handler);

}  // namespace qed::detail
