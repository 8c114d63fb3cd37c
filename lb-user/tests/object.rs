//! The eBPF object as built: the XDP programs make no BPF-to-BPF calls. Every call costs a return, and returns are
//! expensive on kernels that mitigate return-address speculation (a "safe RET" thunk on each), so everything is
//! inlined; the calls that sneak in are `memset`s LLVM emits for zeroed fields and padding whose size is not 1, 2, 4
//! or 8 bytes (`[0; 3]`, `[0; 6]`, a zeroed 64-byte `bpf_fib_lookup`). No root needed.
use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget, SymbolKind};
use xvip::dataplane::EBPF_OBJECT;

/// (section, offset, function) of every call from a program section to a function of the object.
fn calls_to_functions() -> Vec<(String, u64, String)> {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object is an ELF file");
    let mut calls = Vec::new();
    let mut programs = 0;
    for section in file.sections() {
        let name = section.name().unwrap_or_default().to_string();
        if !name.starts_with("xdp") {
            continue;
        }
        programs += 1;
        for (offset, relocation) in section.relocations() {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let symbol = file.symbol_by_index(index).expect("a relocation names a symbol of the object");
            if symbol.kind() == SymbolKind::Text {
                calls.push((name.clone(), offset, symbol.name().unwrap_or("?").to_string()));
            }
        }
    }
    assert!(programs > 0, "no xdp section in the object");
    calls
}

#[test]
fn xdp_programs_call_no_functions() {
    let calls = calls_to_functions();
    assert!(calls.is_empty(), "BPF-to-BPF calls (section, byte offset, callee): {calls:?}");
}
