fn main() -> std::process::ExitCode {
    kvbench::main_entry()
}
