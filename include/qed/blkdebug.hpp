// SPDX-License-Identifier: BSL-1.0
// QEMU's blkdebug fault injection as a block file: a layer over another file
// that fails chosen requests with a chosen errno, as a failing disk would,
// and can impose a request alignment.
//
// A configuration is a list of rules, the inner file's name and an alignment.
// It comes from a name (`blkdebug:RULES_FILE:INNER`, `blkdebug::INNER`:
// parse_blkdebug_name) or is filled in by a program from its own options
// (QEMU's driver=blkdebug,config=...,inject-error.0.event=...,align=...).
//
// Rules (QEMU's semantics): the engine has a state, 1 at open. When the
// format above announces an event (blkdbg_event), every rule for that event
// whose `state` is 0 or the current state acts: set-state rules choose the
// next state (taken once all rules ran); inject-error rules become the
// active set, replacing the one before. Each request is checked against the
// active set: the first rule whose sector lies in the request (or that has
// no sector) and whose iotype matches fails it with its errno, and a `once`
// rule is then deleted. Rules for the event `none` are activated at open.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "qed/block_file.hpp"

namespace qed {

/// QEMU's name of an event ("read_aio", "l1_grow_alloc_table", ...).
const char* blkdbg_event_name(blkdbg_event e) noexcept;
/// The event QEMU calls `name`, if any.
std::optional<blkdbg_event> blkdbg_event_from_name(std::string_view name) noexcept;

/// Kinds of request a rule can fail (QEMU's BlkdebugIOType), as mask bits.
enum class blkdebug_io : unsigned { read, write, write_zeroes, discard, flush, block_status };

/// One rule of a blkdebug configuration.
struct blkdebug_rule {
    /// What a rule does when its event fires.
    enum class kind {
        inject_error,  ///< fail the request (QEMU's `[inject-error]`)
        set_state      ///< move to another state (QEMU's `[set-state]`)
    };
    kind action = kind::inject_error;         ///< which of the two this rule is
    blkdbg_event event = blkdbg_event::none;  ///< the event it waits for
    std::int64_t state = 0;                   ///< acts only in this state (0: in any)
    // inject-error
    int error = 5;             ///< errno to fail with (EIO by default)
    bool once = false;         ///< deleted after failing one request
    bool immediately = false;  ///< accepted for QEMU's sake: every failure completes later anyway
    std::int64_t sector = -1;  ///< 512-byte sector the request must cover (-1: any request)
    /// Which requests it fails: bits 1 << blkdebug_io. QEMU's default: all
    /// but block status.
    unsigned iotypes = (1u << 0) | (1u << 1) | (1u << 2) | (1u << 3) | (1u << 4);
    // set-state
    std::int64_t new_state = 0;  ///< the state a set-state rule moves to
};

/// What a blkdebug file is made of.
struct blkdebug_config {
    std::string config_file;           ///< rules file (QEMU's `config`); empty: none
    std::vector<blkdebug_rule> rules;  ///< rules given directly, after the file's
    std::string image;                 ///< the inner file's name (anything open_file opens)
    std::uint64_t align = 0;           ///< request alignment in bytes, a power of two (0: the inner file's)
};

/// True for names starting with "blkdebug:".
bool is_blkdebug_name(std::string_view name) noexcept;

/// `blkdebug:RULES_FILE:INNER` or `blkdebug::INNER` (no rules file) into a
/// configuration (the rules file is read when the file is opened). On a
/// malformed name: errc::invalid_argument and `error` says why.
std::error_code parse_blkdebug_name(std::string_view name, blkdebug_config& out, std::string& error);

/// Set one option of `rule` by QEMU's name for it: event, state, and for
/// inject-error errno, sector, once, immediately, iotype; for set-state
/// new_state. An unknown key or a bad value: false, and `why` says which.
bool set_blkdebug_rule_option(blkdebug_rule& rule, std::string_view key, std::string_view value, std::string& why);

/// Read the rules of a QEMU blkdebug configuration file ([inject-error] and
/// [set-state] sections of `key = "value"` lines; '#' comments) and append
/// them to `out`. An unknown section, key, event or iotype, or a bad number,
/// fails with errc::invalid_argument and `error` names the file and line.
std::error_code read_blkdebug_rules(const std::string& file, std::vector<blkdebug_rule>& out, std::string& error);

/// Open the inner file (open_file with `options`), read the rules file and
/// put the blkdebug layer over it. Errors: as open_file, or
/// errc::invalid_argument for bad rules or alignment (a line in options.log).
std::shared_ptr<block_file> open_blkdebug_file(const boost::asio::any_io_executor& ex, const blkdebug_config& config,
                                               const file_options& options, std::error_code& ec);

/// The blkdebug layer over an open file (rules already complete).
/// errc::invalid_argument when the alignment is not a power of two below 2 GiB.
std::shared_ptr<block_file> make_blkdebug_file(std::shared_ptr<block_file> inner, std::vector<blkdebug_rule> rules,
                                               std::uint64_t align, std::error_code& ec);

}  // namespace qed
