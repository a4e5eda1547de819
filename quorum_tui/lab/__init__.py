"""The lab: throwaway SSH hosts on this machine (network namespaces, shaped links, real sshd)
for the tests and the benchmarks. Nothing in the core imports it (import-linter checks)."""
