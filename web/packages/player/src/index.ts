// @playgate/player: PlayGate's player kit (see README.md of the PlayGate repository, "The player kit").
export { attach, backoffMs, isHls, Player, playbackToken, type Replacing } from "./player";
export { PlayGateError } from "./http";
export type * from "./types";
