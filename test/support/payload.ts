import { create } from "@bufbuild/protobuf";
import { PayloadsSchema, type Payloads } from "../../src/gen/tern/common/v1/common_pb";

/** A json/plain payload of value. */
export function json(value: unknown): Payloads {
  return create(PayloadsSchema, {
    payloads: [{ metadata: { encoding: new TextEncoder().encode("json/plain") }, data: new TextEncoder().encode(JSON.stringify(value)) }],
  });
}

/** The value of a json/plain payload. */
export function unjson(p: Payloads | undefined): unknown {
  const one = p?.payloads[0];
  return one ? JSON.parse(new TextDecoder().decode(one.data)) : undefined;
}
