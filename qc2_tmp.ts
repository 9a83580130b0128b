import { INDEX_FIELDS, Kind, readIndex } from "./lib/manifest_index.ts";
import { indexLookup, quickCheck } from "./lib/quick_check.ts";
const [src, man, mode] = Deno.args;
const t0 = performance.now();
const st = Deno.statSync(man);
const ix = readIndex(man.replace(/\.json$/, ".idx"), st)!;
const t1 = performance.now();
if (mode === "linear") {
  const { paths, nums } = ix;
  const changed: string[] = [];
  const fpAt = 6;
  for (let i = 0; i < paths.length; i++) {
    const o = i * INDEX_FIELDS;
    const st = Deno.lstatSync(`${src}/${paths[i]}`);
    const k = nums[o];
    if (k === Kind.File) {
      const mtime = Math.trunc(st.mtime?.getTime() ?? 0);
      if (
        !st.isFile || nums[o + 2] !== st.size || nums[o + 3] !== mtime ||
        nums[o + 1] !== ((st.mode ?? 0) & 0o7777) || nums[o + fpAt] !== st.ino ||
        nums[o + fpAt + 1] !== (st.ctime?.getTime() ?? 0)
      ) changed.push(paths[i]);
    } else if (k === Kind.Dir) {
      if (!st.isDirectory) changed.push(paths[i]);
    } else if (!st.isSymlink) changed.push(paths[i]);
  }
  console.log(
    `read ${(t1 - t0).toFixed(1)} linear ${
      (performance.now() - t1).toFixed(1)
    } changed ${changed.length}`,
  );
} else {
  const lk = indexLookup(ix);
  const t2 = performance.now();
  const ch = quickCheck(src, ix, lk, { side: "source", now: Date.now() });
  console.log(
    `read ${(t1 - t0).toFixed(1)} lookup ${(t2 - t1).toFixed(1)} check ${
      (performance.now() - t2).toFixed(1)
    } changed ${ch?.length}`,
  );
}
