import { readIndex } from "./lib/manifest_index.ts";
import { indexLookup, quickCheck } from "./lib/quick_check.ts";
const [root, man] = Deno.args;
let t = performance.now();
const ix = readIndex(man)!;
console.log("readIndex", (performance.now() - t).toFixed(1));
t = performance.now();
const lk = indexLookup(ix);
console.log("lookup", (performance.now() - t).toFixed(1));
for (let k = 0; k < 3; k++) {
  t = performance.now();
  const c = quickCheck(root, ix, lk, { side: "replica", now: Date.now() });
  console.log("quick", c?.length, (performance.now() - t).toFixed(1));
}
