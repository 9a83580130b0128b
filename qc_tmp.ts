import { readIndex } from "./lib/manifest_index.ts";
import { indexLookup, quickCheck } from "./lib/quick_check.ts";
import { statWalk } from "./bench/floor.ts";
const [src, man, mode] = Deno.args;
const t0 = performance.now();
if (mode === "floor") {
  const n = statWalk(src);
  console.log(`floor ${n} ${(performance.now() - t0).toFixed(1)} ms`);
} else {
  const st = Deno.statSync(man);
  const ix = readIndex(man.replace(/\.json$/, ".idx"), st)!;
  const t1 = performance.now();
  const lk = indexLookup(ix);
  const t2 = performance.now();
  const ch = quickCheck(src, ix, lk, { side: "source", now: Date.now() });
  const t3 = performance.now();
  console.log(
    `read ${(t1 - t0).toFixed(1)} lookup ${(t2 - t1).toFixed(1)} check ${
      (t3 - t2).toFixed(1)
    } changed ${ch?.length}`,
  );
}
