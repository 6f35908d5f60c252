# SPDX-License-Identifier: BSL-1.0
# Generates one man page from a program's --help and --version with
# help2man, so that the page always lists the options the program has.
# Run as: cmake -DHELP2MAN=... -DPROGRAM=... -DINCLUDE=file.h2m -DOUTPUT=x.1 -P QedManPage.cmake
foreach(v HELP2MAN PROGRAM INCLUDE OUTPUT)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "QedManPage.cmake: ${v} is not set")
  endif()
endforeach()
execute_process(
  COMMAND ${HELP2MAN} --no-info --no-discard-stderr --section=1 --include=${INCLUDE} --output=${OUTPUT}.tmp ${PROGRAM}
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "help2man failed on ${PROGRAM} (${rc})")
endif()
file(READ ${OUTPUT}.tmp page)
# help2man fills paragraphs; a program's list of command syntaxes (qed-img's
# "Command syntax:" block) is one line per command: keep it unfilled.
string(REGEX REPLACE "(\\.SS \"Command syntax:\"\n)\\.IP\n([^.][^\n]*\n(([^.][^\n]*\n)*))" "\\1.nf\n.RS\n\\2.RE\n.fi\n" page "${page}")
# A lower-case "usage:" line is not help2man's synopsis: the page has its own.
string(REGEX REPLACE "(\\.SH DESCRIPTION\n)usage: [^\n]*\n" "\\1" page "${page}")
# help2man takes a bracketed "-X]" in a syntax line for an option to embolden.
string(REGEX REPLACE "\\\\fB(\\\\-[^\\\\]*)\\\\fR" "\\1" page "${page}")
file(WRITE ${OUTPUT} "${page}")
file(REMOVE ${OUTPUT}.tmp)
