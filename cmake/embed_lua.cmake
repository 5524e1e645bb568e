# Writes OUT: a C file defining one string per operation script, each the
# shared lib.lua followed by the operation's own file, so the binary carries
# its scripts and needs no path at run time.
# Usage: cmake -DLUA_DIR=... -DOUT=... -DOPS="join;leave;relay;refresh" -P embed_lua.cmake
file(READ "${LUA_DIR}/lib.lua" lib_hex HEX)
set(body "/* Generated from the lua/ scripts by cmake/embed_lua.cmake. Do not edit. */\n#include \"sg/scripts.h\"\n\n")
set(table "")
foreach(op IN LISTS OPS)
  file(READ "${LUA_DIR}/${op}.lua" op_hex HEX)
  set(hex "${lib_hex}0a${op_hex}")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
  string(APPEND body "static const char script_${op}[] = {${arr}0x00};\n")
  string(APPEND table "    {\"${op}\", script_${op}, sizeof script_${op} - 1},\n")
endforeach()
string(APPEND body "\nconst sg_script_src sg_script_sources[] = {\n${table}};\n")
list(LENGTH OPS nops)
string(APPEND body "const size_t sg_script_count = ${nops};\n")
file(WRITE "${OUT}.tmp" "${body}")
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
