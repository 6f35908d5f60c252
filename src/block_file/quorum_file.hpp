// SPDX-License-Identifier: BSL-1.0
// QEMU's quorum driver as a block file: the same bytes kept on several
// children, read from all of them and voted on (quorum_file.cpp).
//
// QEMU's semantics:
//  - Reads (read-pattern=quorum, the default) go to every child. When fewer
//    than vote-threshold children succeed, the read fails with the error
//    most of the failed children gave. Otherwise the successful reads are
//    compared byte for byte and grouped into versions; the version with the
//    most identical copies wins (on a tie, the one whose first child comes
//    last, as QEMU's vote list is newest first) and is returned if it has at
//    least vote-threshold copies, else the read fails with EIO. With
//    rewrite-corrupted, the children that returned another version get the
//    winner's data written back before the read completes (errors there are
//    ignored, as in QEMU).
//  - read-pattern=fifo reads the first child only, and the next one when it
//    fails, and so on (no vote; rewrite-corrupted then does nothing, as in
//    QEMU).
//  - Writes, write-zeroes (hole punching), flushes and resizes go to every
//    child and succeed when at least vote-threshold children succeeded;
//    otherwise the error most children gave.
//  - The size is the children's, which must all be the same (EIO else).
//  - blkverify=on (two children, threshold 2): a mismatch is reported with
//    the offset of its first differing byte; QEMU then ends the process, we
//    fail the read with EIO.
// A failed read or write (the quorum could not answer) is logged in one
// line; a child that disagrees or fails while the quorum still answers is
// not (QEMU reports it as a QMP event, which qemu-img and qemu-io drop).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qed/block_file.hpp"

namespace qed::detail {

/// Options of a quorum (QEMU's names in the comments).
struct quorum_options {
    unsigned threshold = 0;                     ///< vote-threshold: 1 to the number of children
    bool fifo = false;                          ///< read-pattern=fifo (else quorum)
    bool rewrite_corrupted = false;             ///< rewrite-corrupted
    bool blkverify = false;                     ///< blkverify
    std::vector<std::string> names;             ///< one per child, for messages
    std::function<void(std::string_view)> log;  ///< one line per failed request
};

/// A quorum over `children` (all on one executor). Null with `why` set (in
/// QEMU's words where it has them) when the options do not fit the
/// children, or the children's sizes differ.
std::shared_ptr<block_file> make_quorum_file(std::vector<std::shared_ptr<block_file>> children, quorum_options options,
                                             std::string& why);

}  // namespace qed::detail
