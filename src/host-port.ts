/** host:port as an address is written: an IPv6 address in brackets (`[::1]:7233`; `::1:7233` reads as another address). */
export function hostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
