import { mutate } from "./gen.ts";
const [root, rep, max] = Deno.args;
console.log(JSON.stringify(mutate(root, 1, Number(rep), { maxSize: Number(max ?? 65536) })));
