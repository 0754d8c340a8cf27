export { Ftdeploy, type ClientState, type FtdeployOptions } from "./client.js";
export {
  AuthError,
  FtdeployError,
  InvalidDocumentError,
  NotReadyError,
  RequestError,
  TenantNotFoundError,
  TenantNotLoadedError,
} from "./errors.js";
export type { Outcome, OutcomeBatch, OutcomeRecord, OutboxStats } from "./outcomes.js";
export {
  ALGORITHM,
  PRIME,
  Routing,
  SCHEMA_VERSION,
  parseDocument,
  subjectNumber,
  type RoutingDocument,
  type RoutingVersion,
} from "./routing.js";
export { SseParser, type SseEvent } from "./sse.js";
