// Library mode: one ES module, dist/playgate-player.js; the typings come from tsc (tsconfig.build.json).
import { defineConfig } from "vitest/config";

export default defineConfig({
  build: {
    lib: { entry: "src/index.ts", formats: ["es"], fileName: () => "playgate-player.js" },
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: true,
  },
  test: { include: ["test/**/*.test.ts"] },
});
